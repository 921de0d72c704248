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
