//! VFIO PCI passthrough and SR-IOV VF management (issue 6; not implemented yet).
