//! kiln-init: PID 1 of a Kiln initramfs. All the work is in `kiln_initramfs::init`.

fn main() {
    kiln_initramfs::init::main()
}
