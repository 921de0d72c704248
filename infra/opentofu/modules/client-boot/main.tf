# Boot configuration of one VM: cloud-init that stores the VM's client token in a 0600 file and starts
# `labpipe vms client`. The client command is an argument list end to end: cloud-init runs a list in
# `runcmd` without a shell, and systemd-run passes its arguments on unchanged, so no value below (hostname,
# allocator URL, program path) is ever parsed as shell syntax.

variable "hostname" {
  type        = string
  description = "The VM's hostname, as the allocator's table names it."
}

variable "allocator_url" {
  type        = string
  description = "URL the client reaches the allocator at."
}

variable "client_token" {
  type        = string
  sensitive   = true
  description = "The VM's client token (only its hash is in the allocator's database)."
}

variable "client_program" {
  type        = list(string)
  description = "Program and leading arguments that run the client on the image."
}

variable "gpu_interval" {
  type    = number
  default = 20
}

variable "heartbeat_interval" {
  type    = number
  default = 30
}

locals {
  token_path = "/etc/labpipe/vm-token"
  client_argv = concat(var.client_program, [
    "--allocator", var.allocator_url,
    "--token-file", local.token_path,
    "--workdir", "/var/lib/labpipe-vm",
    "--gpu-interval", tostring(var.gpu_interval),
    "--heartbeat-interval", tostring(var.heartbeat_interval),
  ])
  # systemd restarts the client if it dies; the reaper reboots the VM if it stays silent
  runcmd = [concat(["systemd-run", "--unit", "labpipe-vm-client", "--property", "Restart=always", "--"], local.client_argv)]
  cloud_config = {
    hostname    = var.hostname
    write_files = [{ path = local.token_path, permissions = "0600", owner = "root:root", content = var.client_token }]
    runcmd      = local.runcmd
  }
}

output "user_data" {
  description = "cloud-init user data (JSON is valid YAML)."
  value       = "#cloud-config\n${jsonencode(local.cloud_config)}"
  sensitive   = true
}

output "runcmd" {
  description = "The commands cloud-init runs, each an argument list (no token in them)."
  value       = local.runcmd
}
