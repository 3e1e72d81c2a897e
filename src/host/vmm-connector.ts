import type { VmmAdapter } from '../vmm/adapter.js';
import { CloudHypervisorAdapter } from '../vmm/cloud-hypervisor.js';
import { LibvirtAdapter } from '../vmm/libvirt.js';
import { QemuAdapter } from '../vmm/qemu.js';
import type { VmSession } from './vm-session.js';

/** How the daemon reaches a VM's VMM, by the config's `vmm.type`; undefined for "none". */
export function vmmConnector(s: VmSession): (() => Promise<VmmAdapter>) | undefined {
  const vmm = s.vm.vmm;
  switch (vmm.type) {
    case 'none':
      return undefined;
    case 'qmp':
      return () => QemuAdapter.connect(vmm.socket, { name: s.vm.name, logger: s.log.child({ component: 'qmp' }), timeoutMs: 5000 });
    case 'libvirt':
      return () => LibvirtAdapter.connect({ domain: vmm.domain, uri: vmm.uri, name: s.vm.name, logger: s.log.child({ component: 'libvirt' }) });
    case 'cloud-hypervisor':
      return () => CloudHypervisorAdapter.connect(vmm.socket, { name: s.vm.name, logger: s.log.child({ component: 'cloud-hypervisor' }), timeoutMs: 5000 });
  }
}
