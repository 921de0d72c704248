# Boot configuration of one VM: cloud-init that makes the unprivileged session account, stores the VM's
# client token in a 0600 file inside a 0700 folder (made by bootcmd, which runs before write_files), and
# starts `labpipe vms client` as a root service. The client runs each user's command as the session account
# in a systemd scope it stops whole at release. The client command is an argument list end to end:
# cloud-init runs a list in `runcmd` without a shell, and systemd-run passes its arguments on unchanged, so
# no value below (hostname, allocator URL, program path) is ever parsed as shell syntax.

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

variable "session_account" {
  type        = string
  default     = "labpipe-vm"
  description = "Unprivileged system account the users' commands run as (never root)."
}

variable "allocator_ca_pem" {
  type        = string
  default     = ""
  description = "PEM of the CA that signed the allocator's TLS certificate; empty: the image's trusted CAs."
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
  secret_dir = "/etc/labpipe"
  token_path = "${local.secret_dir}/vm-token"
  ca_path    = "/etc/labpipe-ca.pem"
  client_argv = concat(var.client_program, [
    "--allocator", var.allocator_url,
    "--token-file", local.token_path,
    "--workdir", "/var/lib/labpipe-vm",
    "--gpu-interval", tostring(var.gpu_interval),
    "--heartbeat-interval", tostring(var.heartbeat_interval),
    "--session-account", var.session_account,
    "--session-isolation", "systemd",
  ], var.allocator_ca_pem == "" ? [] : ["--ca-file", local.ca_path])
  # systemd restarts the client if it dies; the reaper reboots the VM if it stays silent
  runcmd     = [concat(["systemd-run", "--unit", "labpipe-vm-client", "--property", "Restart=always", "--"], local.client_argv)]
  token_file = { path = local.token_path, permissions = "0600", owner = "root:root", content = var.client_token }
  ca_file    = { path = local.ca_path, permissions = "0644", owner = "root:root", content = var.allocator_ca_pem }
  cloud_config = {
    hostname = var.hostname
    users = ["default", {
      name  = var.session_account, system = true, no_create_home = true, lock_passwd = true,
      shell = "/usr/sbin/nologin", homedir = "/nonexistent",
    }]
    bootcmd     = [["install", "-d", "-m", "0700", "-o", "root", "-g", "root", local.secret_dir]]
    write_files = var.allocator_ca_pem == "" ? [local.token_file] : [local.token_file, local.ca_file]
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
