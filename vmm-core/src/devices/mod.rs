//! Platform devices on the port bus: the serial console, the i8042 reset
//! line, the CMOS clock, the ACPI power-management registers; the bus
//! they sit on; and the device manager that creates and wires every device.

pub mod acpi_pm;
pub mod bus;
pub mod cmos;
pub mod console;
pub mod i8042;
pub mod manager;
pub mod serial;
