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

# AWS flavor only.

variable "region" {
  type    = string
  default = "us-west-2"
}

variable "instance_type" {
  type        = string
  default     = "g4dn.xlarge"
  description = "A GPU instance type (g4dn: one T4)."
}

variable "image_id" {
  type        = string
  default     = ""
  description = "AMI with NVIDIA drivers and labpipe installed at client_program; required to apply."
}

variable "key_name" {
  type    = string
  default = ""
}

variable "subnet_id" {
  type    = string
  default = ""
}

variable "ssh_cidr" {
  type        = string
  default     = "10.0.0.0/8"
  description = "Who may reach the VMs' SSH port."
}

variable "root_volume_gb" {
  type    = number
  default = 100
}

variable "environment" {
  type    = string
  default = "dev"
}
