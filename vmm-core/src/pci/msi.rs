//! MSI routing over KVM: the VMM keeps the whole GSI routing table (KVM
//! replaces it on every KVM_SET_GSI_ROUTING, so the in-kernel IOAPIC/PIC
//! entries for GSIs 0-23 are resubmitted each time), hands out GSIs, and
//! gives each device vector one GSI + one irqfd. A masked vector has its
//! irqfd detached: backend signals stay in the eventfd and are delivered
//! by KVM when the irqfd is attached again on unmask.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KvmIrqRouting, kvm_irq_routing_entry,
    kvm_irq_routing_entry__bindgen_ty_1, kvm_irq_routing_irqchip, kvm_irq_routing_msi,
};
use kvm_ioctls::VmFd;
use pci::{MsiMessage, MsiRoutes};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// Why a route could not be set.
#[derive(Debug, thiserror::Error)]
pub enum MsiError {
    #[error("no free GSI (KVM allows {0})")]
    NoGsi(u32),
    #[error("KVM {0} failed")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
}

/// GSIs 0..24 belong to the in-kernel IOAPIC (and PIC for 0..16).
pub const FIRST_MSI_GSI: u32 = 24;
/// KVM's routing table limit.
pub const MAX_GSI: u32 = 4096;

/// One routing-table entry, before it becomes KVM's union.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Irqchip { gsi: u32, chip: u32, pin: u32 },
    Msi { gsi: u32, msg: MsiMessage },
}

/// KVM's default table for the in-kernel irqchip, then `msi` (pure).
pub fn routing_table(msi: &BTreeMap<u32, MsiMessage>) -> Vec<Route> {
    let mut t = Vec::with_capacity(40 + msi.len());
    for gsi in 0..FIRST_MSI_GSI {
        t.push(Route::Irqchip {
            gsi,
            chip: KVM_IRQCHIP_IOAPIC,
            pin: gsi,
        });
        if gsi < 16 {
            let chip = if gsi < 8 {
                KVM_IRQCHIP_PIC_MASTER
            } else {
                KVM_IRQCHIP_PIC_SLAVE
            };
            t.push(Route::Irqchip {
                gsi,
                chip,
                pin: gsi % 8,
            });
        }
    }
    t.extend(msi.iter().map(|(gsi, msg)| Route::Msi {
        gsi: *gsi,
        msg: *msg,
    }));
    t
}

fn to_kvm(route: Route) -> kvm_irq_routing_entry {
    match route {
        Route::Irqchip { gsi, chip, pin } => kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_IRQCHIP,
            u: kvm_irq_routing_entry__bindgen_ty_1 {
                irqchip: kvm_irq_routing_irqchip { irqchip: chip, pin },
            },
            ..Default::default()
        },
        Route::Msi { gsi, msg } => kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_MSI,
            u: kvm_irq_routing_entry__bindgen_ty_1 {
                msi: kvm_irq_routing_msi {
                    address_lo: (msg.addr & 0xffff_ffff) as u32,
                    address_hi: (msg.addr >> 32) as u32,
                    data: msg.data,
                    ..Default::default()
                },
            },
            ..Default::default()
        },
    }
}

/// The VM's GSI routing table.
pub struct GsiRouting {
    vm: Arc<VmFd>,
    msi: BTreeMap<u32, MsiMessage>,
    next: u32,
}

impl std::fmt::Debug for GsiRouting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GsiRouting")
            .field("msi", &self.msi)
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

impl GsiRouting {
    pub fn new(vm: Arc<VmFd>) -> Self {
        Self {
            vm,
            msi: BTreeMap::new(),
            next: FIRST_MSI_GSI,
        }
    }

    /// A fresh GSI for an MSI route.
    pub fn allocate(&mut self) -> Result<u32, MsiError> {
        if self.next >= MAX_GSI {
            return Err(MsiError::NoGsi(MAX_GSI));
        }
        self.next += 1;
        Ok(self.next - 1)
    }

    /// Points `gsi` at `msg` and resubmits the whole table (if it changed).
    pub fn set_msi(&mut self, gsi: u32, msg: MsiMessage) -> Result<(), MsiError> {
        if self.msi.get(&gsi) == Some(&msg) {
            return Ok(());
        }
        self.msi.insert(gsi, msg);
        self.commit()
    }

    fn commit(&self) -> Result<(), MsiError> {
        let table = routing_table(&self.msi);
        let mut routing = KvmIrqRouting::new(0).map_err(|_| MsiError::NoGsi(MAX_GSI))?;
        for r in table {
            routing
                .push(to_kvm(r))
                .map_err(|_| MsiError::NoGsi(MAX_GSI))?;
        }
        self.vm
            .set_gsi_routing(&routing)
            .map_err(|e| MsiError::Kvm("SET_GSI_ROUTING", e))
    }
}

struct Vector {
    gsi: u32,
    evt: EventFd,
    attached: bool,
}

/// One device's vectors: GSI + irqfd each.
pub struct KvmMsiRoutes {
    vm: Arc<VmFd>,
    routing: Arc<Mutex<GsiRouting>>,
    vectors: Vec<Vector>,
}

impl std::fmt::Debug for KvmMsiRoutes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let gsis: Vec<u32> = self.vectors.iter().map(|v| v.gsi).collect();
        f.debug_struct("KvmMsiRoutes")
            .field("gsis", &gsis)
            .finish_non_exhaustive()
    }
}

impl KvmMsiRoutes {
    pub fn new(
        vm: Arc<VmFd>,
        routing: Arc<Mutex<GsiRouting>>,
        count: u16,
    ) -> Result<Self, MsiError> {
        let mut vectors = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            let gsi = routing
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .allocate()?;
            let evt = EventFd::new(EFD_NONBLOCK).map_err(MsiError::EventFd)?;
            vectors.push(Vector {
                gsi,
                evt,
                attached: false,
            });
        }
        Ok(Self {
            vm,
            routing,
            vectors,
        })
    }
}

impl MsiRoutes for KvmMsiRoutes {
    fn update(&mut self, vector: u16, msg: MsiMessage, masked: bool) -> std::io::Result<()> {
        let io = |e: MsiError| std::io::Error::other(e);
        let Some(v) = self.vectors.get_mut(usize::from(vector)) else {
            return Ok(());
        };
        self.routing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set_msi(v.gsi, msg)
            .map_err(io)?;
        if masked && v.attached {
            self.vm
                .unregister_irqfd(&v.evt, v.gsi)
                .map_err(|e| io(MsiError::Kvm("IRQFD deassign", e)))?;
            v.attached = false;
        } else if !masked && !v.attached {
            self.vm
                .register_irqfd(&v.evt, v.gsi)
                .map_err(|e| io(MsiError::Kvm("IRQFD", e)))?;
            v.attached = true;
        }
        Ok(())
    }

    fn notifier(&self, vector: u16) -> Option<&EventFd> {
        self.vectors.get(usize::from(vector)).map(|v| &v.evt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_keeps_the_irqchip_routes() {
        let mut msi = BTreeMap::new();
        msi.insert(
            24,
            MsiMessage {
                addr: 0xfee0_0000,
                data: 0x41,
            },
        );
        let t = routing_table(&msi);
        assert_eq!(t.len(), 24 + 16 + 1);
        assert!(t.contains(&Route::Irqchip {
            gsi: 4,
            chip: KVM_IRQCHIP_IOAPIC,
            pin: 4
        }));
        assert!(t.contains(&Route::Irqchip {
            gsi: 4,
            chip: KVM_IRQCHIP_PIC_MASTER,
            pin: 4
        }));
        assert!(t.contains(&Route::Irqchip {
            gsi: 12,
            chip: KVM_IRQCHIP_PIC_SLAVE,
            pin: 4
        }));
        assert!(t.contains(&Route::Irqchip {
            gsi: 23,
            chip: KVM_IRQCHIP_IOAPIC,
            pin: 23
        }));
        assert_eq!(
            t.last(),
            Some(&Route::Msi {
                gsi: 24,
                msg: MsiMessage {
                    addr: 0xfee0_0000,
                    data: 0x41
                }
            })
        );
    }

    #[test]
    fn host_kvm_accepts_the_table_and_irqfds() {
        let kvm = kvm_ioctls::Kvm::new().unwrap();
        let vm = Arc::new(kvm.create_vm().unwrap());
        vm.create_irq_chip().unwrap();
        let routing = Arc::new(Mutex::new(GsiRouting::new(vm.clone())));
        let mut routes = KvmMsiRoutes::new(vm, routing.clone(), 2).unwrap();
        let msg = MsiMessage {
            addr: 0xfee0_0000,
            data: 0x30,
        };
        routes.update(1, msg, false).unwrap();
        assert!(routes.vectors[1].attached);
        routes.update(1, msg, true).unwrap();
        assert!(!routes.vectors[1].attached, "masked: irqfd detached");
        routes.update(1, msg, false).unwrap();
        routes.update(9, msg, false).unwrap();
        assert_eq!(
            routing.lock().unwrap().allocate().unwrap(),
            FIRST_MSI_GSI + 2
        );
        assert!(routes.notifier(0).is_some() && routes.notifier(2).is_none());
    }
}
