//! The container image: a `FROM scratch`-style root holding only a statically linked `jm`, `/etc/nsswitch.conf`,
//! `/etc/passwd` and `/etc/group` (root), and empty `/tmp`, `/data` and `/checkpoints`, made with `docker import`
//! from a tarball (no registry, no base image, no BuildKit needed).
//!
//! The tag is `jepsen-jm:<hash of the binary>`, so an image is built once per binary and reused by later runs;
//! old tags are left for `docker image prune`/`docker rmi` (see `jepsen/README.md`).
//!
//! A dynamically linked `jm` would not start in an empty root (no loader, no libc), so the binary's ELF program
//! headers are checked first: no `PT_INTERP` entry, or the build is refused with the command that makes one.

use std::hash::Hasher;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{docker, DockerError};

/// The repository part of the image tags.
pub const REPOSITORY: &str = "jepsen-jm";

/// How to build the binary the image needs.
pub const STATIC_BUILD: &str =
    "RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build --release --bin jm -p jobmanager \
     --target x86_64-unknown-linux-gnu --target-dir target/static";

/// The target the static build is made for (`--target`, so build scripts and proc macros stay dynamic). The image
/// is x86-64 only: [`is_static_elf`] refuses other machines.
pub const HOST_TRIPLE: &str = "x86_64-unknown-linux-gnu";

/// The static `jm`: `$JM_BIN`, else the workspace's static release build, else its static debug build.
pub fn static_jm_binary() -> Result<PathBuf, DockerError> {
    if let Some(path) = std::env::var_os("JM_BIN") {
        return Ok(PathBuf::from(path));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    ["release", "debug"]
        .iter()
        .map(|profile| root.join("target/static").join(HOST_TRIPLE).join(profile).join("jm"))
        .find(|p| p.exists())
        .ok_or_else(|| DockerError::NoStaticBinary(format!("build it with `{STATIC_BUILD}` or set JM_BIN")))
}

/// Whether the ELF header in `bytes` describes a static executable (no program interpreter). `Err` says why the
/// bytes are not an x86-64 ELF executable at all.
pub fn is_static_elf(bytes: &[u8]) -> Result<bool, String> {
    const PT_INTERP: u32 = 3;
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" {
        return Err("not an ELF file".into());
    }
    if bytes[4] != 2 || bytes[5] != 1 {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    if u16_at(0x12) != 62 {
        return Err("not an x86-64 executable".into());
    }
    let (phoff, phentsize, phnum) = (u64_at(0x20) as usize, u16_at(0x36) as usize, u16_at(0x38) as usize);
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        let Some(header) = bytes.get(at..at + 4) else { return Err("truncated program headers".into()) };
        if u32::from_le_bytes(header.try_into().expect("4 bytes")) == PT_INTERP {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Makes sure an image of `jm` exists and returns its tag.
pub fn ensure(jm: &Path) -> Result<String, DockerError> {
    let build_failed = |why: String| DockerError::ImageBuild(format!("{}: {why}", jm.display()));
    let mut file = std::fs::File::open(jm).map_err(|e| build_failed(format!("cannot open: {e}")))?;
    let mut head = vec![0; 4096];
    let n = file.read(&mut head).map_err(|e| build_failed(format!("cannot read: {e}")))?;
    head.truncate(n);
    if !is_static_elf(&head).map_err(build_failed)? {
        return Err(DockerError::NotStatic(jm.to_path_buf(), STATIC_BUILD.to_string()));
    }
    let tag = format!("{REPOSITORY}:{:016x}", content_hash(jm).map_err(|e| build_failed(format!("cannot read: {e}")))?);
    if docker(&["image", "inspect", "--format", "{{.Id}}", &tag]).is_ok() {
        return Ok(tag);
    }
    let stage = std::env::temp_dir().join(format!("jepsen-image-{}", std::process::id()));
    let result = import(jm, &stage, &tag);
    let _ = std::fs::remove_dir_all(&stage);
    result.map(|()| tag)
}

fn content_hash(path: &Path) -> std::io::Result<u64> {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let mut file = std::fs::File::open(path)?;
    let mut buf = vec![0; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(hasher.finish());
        }
        hasher.write(&buf[..n]);
    }
}

/// The root file system's small files.
pub const FILES: [(&str, &str); 3] = [
    ("etc/nsswitch.conf", "passwd: files\ngroup: files\nhosts: files dns\n"),
    ("etc/passwd", "root:x:0:0:root:/:/jm\n"),
    ("etc/group", "root:x:0:\n"),
];

fn import(jm: &Path, stage: &Path, tag: &str) -> Result<(), DockerError> {
    let failed = |what: &str, e: std::io::Error| DockerError::ImageBuild(format!("{what} in {}: {e}", stage.display()));
    let _ = std::fs::remove_dir_all(stage);
    for dir in ["etc", "tmp", "data", "checkpoints"] {
        std::fs::create_dir_all(stage.join(dir)).map_err(|e| failed("cannot create a directory", e))?;
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(stage.join("tmp"), std::fs::Permissions::from_mode(0o1777))
        .map_err(|e| failed("cannot make /tmp writable", e))?;
    for (path, text) in FILES {
        std::fs::write(stage.join(path), text).map_err(|e| failed("cannot write a file", e))?;
    }
    let jm = std::fs::canonicalize(jm).map_err(|e| failed("cannot resolve the binary", e))?;
    std::os::unix::fs::symlink(&jm, stage.join("jm")).map_err(|e| failed("cannot link the binary", e))?;
    // tar -h stores the binary itself, not the link; everything is owned by root.
    let mut tar = Command::new("tar")
        .args(["-C"])
        .arg(stage)
        .args(["-ch", "--owner=0", "--group=0", "--numeric-owner", "."])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| DockerError::ImageBuild(format!("cannot run tar: {e}")))?;
    let tar_out = tar.stdout.take().expect("piped");
    let import = Command::new("docker")
        .args(["import", "--change", "ENTRYPOINT [\"/jm\"]", "--change", "WORKDIR /data", "-", tag])
        .stdin(tar_out)
        .output()
        .map_err(|e| DockerError::ImageBuild(format!("cannot run docker import: {e}")))?;
    let tar = tar.wait_with_output().map_err(|e| DockerError::ImageBuild(format!("tar: {e}")))?;
    if !tar.status.success() {
        return Err(DockerError::ImageBuild(format!("tar failed: {}", String::from_utf8_lossy(&tar.stderr).trim())));
    }
    if !import.status.success() {
        return Err(DockerError::ImageBuild(format!(
            "docker import failed: {}",
            String::from_utf8_lossy(&import.stderr).trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::is_static_elf;

    /// A minimal ELF64 header with one program header of type `p_type`.
    fn elf(p_type: u32) -> Vec<u8> {
        let mut b = vec![0u8; 64 + 56];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[0x12..0x14].copy_from_slice(&62u16.to_le_bytes());
        b[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        b[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        b[64..68].copy_from_slice(&p_type.to_le_bytes());
        b
    }

    #[test]
    fn a_program_interpreter_means_dynamically_linked() {
        assert_eq!(is_static_elf(&elf(1)), Ok(true), "PT_LOAD only");
        assert_eq!(is_static_elf(&elf(3)), Ok(false), "PT_INTERP");
        assert!(is_static_elf(b"#!/bin/sh\n").is_err());
        let mut arm = elf(1);
        arm[0x12] = 183;
        assert_eq!(is_static_elf(&arm), Err("not an x86-64 executable".to_string()));
    }

    #[test]
    fn the_harness_itself_is_recognised() {
        // The test binary is a real ELF file; whichever way it was linked, the header must parse.
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(is_static_elf(&exe).is_ok());
    }
}
