# Flavor "aws": one EC2 GPU instance per VM, booted with the client-boot module's cloud-init.
# Another cloud is another folder beside this one with the same variables (variables.tf) and outputs
# (`vms`: hostname => {vm_id, address, instance_id}); the provisioner block names the folder.

terraform {
  required_version = ">= 1.6"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.0"
    }
  }
}

provider "aws" {
  region = var.region
}

module "boot" {
  for_each           = var.vms
  source             = "../modules/client-boot"
  hostname           = each.key
  allocator_url      = var.allocator_url
  client_token       = var.client_tokens[each.key]
  client_program     = var.client_program
  gpu_interval       = var.gpu_interval
  heartbeat_interval = var.heartbeat_interval
  session_account    = var.session_account
  allocator_ca_pem   = var.allocator_ca_pem
}

resource "aws_security_group" "vm" {
  name_prefix = "labpipe-vms-${var.environment}-"
  description = "labpipe VMs: SSH from the lab, anything out"

  ingress {
    from_port   = 22
    to_port     = 22
    protocol    = "tcp"
    cidr_blocks = [var.ssh_cidr]
  }

  egress {
    from_port   = 0
    to_port     = 0
    protocol    = "-1"
    cidr_blocks = ["0.0.0.0/0"]
  }
}

resource "aws_instance" "vm" {
  for_each                    = var.vms
  ami                         = var.image_id
  instance_type               = var.instance_type
  key_name                    = var.key_name == "" ? null : var.key_name
  subnet_id                   = var.subnet_id == "" ? null : var.subnet_id
  vpc_security_group_ids      = [aws_security_group.vm.id]
  user_data                   = module.boot[each.key].user_data
  user_data_replace_on_change = true

  root_block_device {
    volume_size = var.root_volume_gb
    encrypted   = true
  }

  metadata_options {
    http_tokens = "required"
  }

  tags = {
    Name          = each.key
    "labpipe:vm"  = tostring(each.value.vm_id)
    "labpipe:env" = var.environment
  }

  lifecycle {
    precondition {
      condition     = var.image_id != ""
      error_message = "Set image_id to an AMI with NVIDIA drivers and labpipe installed."
    }
  }
}

output "vms" {
  value = {
    for hostname, instance in aws_instance.vm : hostname => {
      vm_id       = var.vms[hostname].vm_id
      address     = coalesce(instance.public_ip, instance.private_ip)
      instance_id = instance.id
    }
  }
}

output "runcmd" {
  value = { for hostname, vm in var.vms : hostname => module.boot[hostname].runcmd }
}
