# The variables every flavor declares (the provisioner writes them to labpipe.auto.tfvars.json).

variable "vms" {
  type        = map(object({ vm_id = number }))
  description = "The VMs to exist, by hostname."
}

variable "client_tokens" {
  type        = map(string)
  sensitive   = true
  description = "Per hostname, the VM's client token."
}

variable "allocator_url" {
  type = string
}

variable "client_program" {
  type    = list(string)
  default = ["/opt/labpipe/.venv/bin/labpipe", "vms", "client"]
}

variable "gpu_interval" {
  type    = number
  default = 20
}

variable "heartbeat_interval" {
  type    = number
  default = 30
}

variable "session_account" {
  type        = string
  default     = "labpipe-vm"
  description = "Unprivileged system account users' commands run as on each VM (never root)."
}

variable "allocator_ca_pem" {
  type        = string
  default     = ""
  description = "PEM of the CA that signed the allocator's TLS certificate; empty: the image's trusted CAs."
}
