//! Kiln's initramfs.
//!
//! Host side: [`build`] assembles the initramfs — [`archive`] writes the newc cpio holding
//! `kiln-init`, its [`config::InitConfig`] and the kernel-module closure computed by [`modules`].
//! Device side: [`init`] is the body of `kiln-init`, PID 1 of the initramfs; it uses the
//! on-device contract of `kiln-boot` (command line, GPT, boot-disk discovery, verity) and the
//! layout plan of `kiln-overlays`.

pub mod archive;
pub mod build;
pub mod config;
pub mod dm;
pub mod init;
pub mod modules;
