import type { VmmAdapter } from '../vmm/adapter.js';
import { CloudHypervisorAdapter } from '../vmm/cloud-hypervisor.js';
import { LibvirtAdapter } from '../vmm/libvirt.js';
import { QemuAdapter } from '../vmm/qemu.js';
import type { VmConfig } from '../config/schema.js';
import type { Logger } from '../log.js';

/** How the daemon reaches a VM's VMM, by the config's `vmm.type`; undefined for "none". */
export function vmmConnector(vm: VmConfig, log: Logger): (() => Promise<VmmAdapter>) | undefined {
  const vmm = vm.vmm;
  switch (vmm.type) {
    case 'none':
      return undefined;
    case 'qmp':
      return () => QemuAdapter.connect(vmm.socket, { name: vm.name, logger: log.child({ component: 'qmp' }), timeoutMs: 5000 });
    case 'libvirt':
      return () => LibvirtAdapter.connect({ domain: vmm.domain, uri: vmm.uri, name: vm.name, logger: log.child({ component: 'libvirt' }) });
    case 'cloud-hypervisor':
      return () => CloudHypervisorAdapter.connect(vmm.socket, { name: vm.name, logger: log.child({ component: 'cloud-hypervisor' }), timeoutMs: 5000 });
  }
}
