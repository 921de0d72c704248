# Flavor "render": every VM's boot configuration rendered and kept in the state, no machine made.
# It needs no provider plugin, so `tofu init/validate/plan/apply` run offline; the tests use it to check
# the module and the provisioner's tofu sequence. A VM made this way never registers (there is no machine),
# so the reaper fails it after the `stuck_after` limit, which is the truth.

terraform {
  required_version = ">= 1.6"
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

resource "terraform_data" "vm" {
  for_each = var.vms
  input = {
    hostname         = each.key
    vm_id            = each.value.vm_id
    user_data_sha256 = sha256(module.boot[each.key].user_data)
  }
}

output "vms" {
  description = "Per hostname: the allocator's VM id, where it is reached (nothing here) and its resource id."
  value = {
    for hostname, vm in var.vms : hostname => {
      vm_id       = vm.vm_id
      address     = ""
      instance_id = terraform_data.vm[hostname].id
    }
  }
}

output "runcmd" {
  description = "Per hostname, what cloud-init would run (argument lists)."
  value       = { for hostname, vm in var.vms : hostname => module.boot[hostname].runcmd }
}
