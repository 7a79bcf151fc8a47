//! An `LD_PRELOAD` library that makes a node's disk misbehave on demand: failing or slow
//! `fsync`s, and writes that fail with `ENOSPC`. The drills and the disk-fault tests put it in
//! front of a `switchboard serve` process; it must never be linked into a program that serves.
//!
//! Why a preload shim: the kernel's fault targets (device-mapper `error`, `delay`, `flakey`,
//! `dust`) need the `dm` driver, and in the containers the drills run in there is none
//! (`dmsetup targets` answers "/dev/mapper/control: open failed: No such device"). A shim needs
//! nothing from the kernel and fails exactly the calls RocksDB and the node make.
//!
//! What it intercepts (resolving the real functions with `dlsym(RTLD_NEXT, ..)`): `fsync`,
//! `fdatasync` and `sync_file_range` (RocksDB syncs its write-ahead log with `fdatasync`, new
//! files and directories with `fsync`, and the node's snapshot files with `fsync`); `write`,
//! `pwrite` and `pwrite64` (RocksDB appends with `write`, the snapshot writer with `write`).
//!
//! Control: the environment variable [`CONTROL_ENV`] names a control file whose first line is
//! one of
//! - `ok` (or no file, or an empty one, or anything unrecognised): every call goes through;
//! - `fail-sync`: every sync call fails with `EIO`, without syncing;
//! - `slow-sync <ms>`: every sync call first sleeps `<ms>` milliseconds (at most
//!   [`SLOW_SYNC_MS_MAX`]);
//! - `enospc-write`: every write to a regular file other than stdin, stdout and stderr fails
//!   with `ENOSPC` (logs on stderr still get out).
//!
//! The file is looked at again at most every [`CONTROL_RECHECK_MS`] milliseconds, and read
//! only when its inode, size or modification time changed; write it by renaming a complete
//! file over it so that the shim never reads half a line. Everything on the call path is
//! async-signal-safe (no allocation, no lock): a signal handler that writes to a pipe goes
//! through `write` too.

#![allow(unsafe_code)]

use std::ffi::{CStr, CString, c_int, c_uint, c_void};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};

/// The environment variable naming the control file.
pub const CONTROL_ENV: &str = "SWITCHBOARD_FAULT_SHIM";
/// How often (at most) the control file is looked at, in milliseconds.
pub const CONTROL_RECHECK_MS: u64 = 20;
/// Longest delay `slow-sync` accepts, in milliseconds: longer would only stall a test.
pub const SLOW_SYNC_MS_MAX: u64 = 10_000;
/// Bytes of the control file that are read; a longer file is read up to this.
const CONTROL_BYTES_MAX: usize = 64;

/// What the shim does, as the control file says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Ok,
    FailSync,
    SlowSync { ms: u64 },
    EnospcWrite,
}

impl Control {
    /// Parses the control file's content (its first line; surrounding blanks ignored).
    /// Anything it does not know is `Ok`: the shim never invents a fault.
    pub fn parse(content: &[u8]) -> Control {
        let line = content.split(|b| *b == b'\n').next().unwrap_or(&[]);
        let line = line.trim_ascii();
        let mut words = line
            .split(|b| b.is_ascii_whitespace())
            .filter(|w| !w.is_empty());
        match (words.next(), words.next(), words.next()) {
            (Some(b"fail-sync"), None, None) => Control::FailSync,
            (Some(b"enospc-write"), None, None) => Control::EnospcWrite,
            (Some(b"slow-sync"), Some(ms), None) => match parse_u64(ms) {
                Some(ms) => Control::SlowSync {
                    ms: ms.min(SLOW_SYNC_MS_MAX),
                },
                None => Control::Ok,
            },
            _ => Control::Ok,
        }
    }

    fn encode(self) -> (u8, u64) {
        match self {
            Control::Ok => (MODE_OK, 0),
            Control::FailSync => (MODE_FAIL_SYNC, 0),
            Control::SlowSync { ms } => (MODE_SLOW_SYNC, ms),
            Control::EnospcWrite => (MODE_ENOSPC_WRITE, 0),
        }
    }

    fn decode(mode: u8, ms: u64) -> Control {
        match mode {
            MODE_FAIL_SYNC => Control::FailSync,
            MODE_SLOW_SYNC => Control::SlowSync { ms },
            MODE_ENOSPC_WRITE => Control::EnospcWrite,
            _ => Control::Ok,
        }
    }
}

/// Decimal digits only (no sign, no blanks), without overflow.
fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, d| {
        if d.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        } else {
            None
        }
    })
}

const MODE_OK: u8 = 0;
const MODE_FAIL_SYNC: u8 = 1;
const MODE_SLOW_SYNC: u8 = 2;
const MODE_ENOSPC_WRITE: u8 = 3;

/// The current mode and its argument (the delay of `slow-sync`).
static MODE: AtomicU8 = AtomicU8::new(MODE_OK);
static SLOW_MS: AtomicU64 = AtomicU64::new(0);
/// Monotonic milliseconds of the last look at the control file (0: never).
static CHECKED_MS: AtomicU64 = AtomicU64::new(0);
/// Inode, size and modification time of the control file when it was last read, folded.
static SEEN_STAMP: AtomicU64 = AtomicU64::new(0);
/// The control file's path, set once from the environment before `main` (see [`INIT`]).
static CONTROL_PATH: OnceLock<Option<CString>> = OnceLock::new();

/// The real functions, resolved once (0: not yet).
static REAL_FSYNC: AtomicUsize = AtomicUsize::new(0);
static REAL_FDATASYNC: AtomicUsize = AtomicUsize::new(0);
static REAL_SYNC_FILE_RANGE: AtomicUsize = AtomicUsize::new(0);
static REAL_WRITE: AtomicUsize = AtomicUsize::new(0);
static REAL_PWRITE: AtomicUsize = AtomicUsize::new(0);
static REAL_PWRITE64: AtomicUsize = AtomicUsize::new(0);

/// Runs before `main` (the dynamic loader calls `.init_array` entries of preloaded libraries
/// first): reads the environment and resolves every real function while the process is still
/// single-threaded, so that the call path never allocates or resolves.
#[used]
#[unsafe(link_section = ".init_array")]
static INIT: extern "C" fn() = init;

extern "C" fn init() {
    control_path();
    for (slot, name) in symbols() {
        resolve(slot, name);
    }
    refresh(true);
}

fn symbols() -> [(&'static AtomicUsize, &'static CStr); 6] {
    [
        (&REAL_FSYNC, c"fsync"),
        (&REAL_FDATASYNC, c"fdatasync"),
        (&REAL_SYNC_FILE_RANGE, c"sync_file_range"),
        (&REAL_WRITE, c"write"),
        (&REAL_PWRITE, c"pwrite"),
        (&REAL_PWRITE64, c"pwrite64"),
    ]
}

fn control_path() -> Option<&'static CStr> {
    CONTROL_PATH
        .get_or_init(|| {
            std::env::var_os(CONTROL_ENV)
                .filter(|p| !p.is_empty())
                .and_then(|p| CString::new(std::os::unix::ffi::OsStringExt::into_vec(p)).ok())
        })
        .as_deref()
}

/// The address of the next definition of `name` after this library, 0 when there is none.
fn resolve(slot: &AtomicUsize, name: &CStr) -> usize {
    let known = slot.load(Ordering::Relaxed);
    if known != 0 {
        return known;
    }
    // SAFETY: `name` is a NUL-terminated C string; RTLD_NEXT asks for the definition after
    // this library's own, i.e. libc's.
    let found = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) } as usize;
    slot.store(found, Ordering::Relaxed);
    found
}

fn monotonic_ms() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec to write into; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let secs = u64::try_from(now.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(now.tv_nsec).unwrap_or(0);
    // +1: 0 means "never looked".
    secs.saturating_mul(1000).saturating_add(nanos / 1_000_000) + 1
}

/// Looks at the control file when it is due (or `force`), and re-reads it if it changed.
fn refresh(force: bool) {
    let Some(path) = control_path() else {
        return;
    };
    let now = monotonic_ms();
    let checked = CHECKED_MS.load(Ordering::Relaxed);
    if !force && now.saturating_sub(checked) < CONTROL_RECHECK_MS {
        return;
    }
    // One thread looks; the others go on with the mode they have.
    if CHECKED_MS
        .compare_exchange(checked, now, Ordering::Relaxed, Ordering::Relaxed)
        .is_err()
    {
        return;
    }
    // SAFETY: an all-zero `stat` is a valid value to be overwritten.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `st` is a valid out-pointer.
    if unsafe { libc::stat(path.as_ptr(), &mut st) } != 0 {
        // No control file: no fault.
        SEEN_STAMP.store(0, Ordering::Relaxed);
        set(Control::Ok);
        return;
    }
    let stamp = (st.st_ino as u64)
        .rotate_left(40)
        .wrapping_add((st.st_size as u64).rotate_left(20))
        .wrapping_add((st.st_mtime as u64).wrapping_mul(1_000_000_000))
        .wrapping_add(st.st_mtime_nsec as u64)
        | 1;
    if stamp == SEEN_STAMP.load(Ordering::Relaxed) {
        return;
    }
    let mut buf = [0u8; CONTROL_BYTES_MAX];
    // SAFETY: plain open/read/close of a NUL-terminated path into a stack buffer of its length.
    let read = unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return;
        }
        let n = libc::read(fd, buf.as_mut_ptr().cast::<c_void>(), buf.len());
        libc::close(fd);
        n
    };
    let Ok(read) = usize::try_from(read) else {
        return;
    };
    SEEN_STAMP.store(stamp, Ordering::Relaxed);
    set(Control::parse(&buf[..read.min(buf.len())]));
}

fn set(control: Control) {
    let (mode, ms) = control.encode();
    SLOW_MS.store(ms, Ordering::Relaxed);
    MODE.store(mode, Ordering::Relaxed);
}

/// The mode in force now.
fn current() -> Control {
    refresh(false);
    Control::decode(
        MODE.load(Ordering::Relaxed),
        SLOW_MS.load(Ordering::Relaxed),
    )
}

fn set_errno(code: c_int) {
    // SAFETY: `__errno_location` returns this thread's errno, always valid.
    unsafe { *libc::__errno_location() = code };
}

/// What a sync call does before (or instead of) the real one: `Err(-1)` with errno set means
/// "fail without syncing".
fn before_sync() -> Result<(), c_int> {
    match current() {
        Control::FailSync => {
            set_errno(libc::EIO);
            Err(-1)
        }
        Control::SlowSync { ms } => {
            std::thread::sleep(std::time::Duration::from_millis(ms));
            Ok(())
        }
        Control::Ok | Control::EnospcWrite => Ok(()),
    }
}

/// Whether a write to `fd` must fail with ENOSPC now: only regular files, never stdio.
fn write_refused(fd: c_int) -> bool {
    if fd <= libc::STDERR_FILENO || current() != Control::EnospcWrite {
        return false;
    }
    // SAFETY: an all-zero `stat` is a valid value to be overwritten; `fstat` of any fd is safe.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return false;
    }
    st.st_mode & libc::S_IFMT == libc::S_IFREG
}

/// The real function in `slot`, or errno ENOSYS when libc has none.
macro_rules! real {
    ($slot:expr, $name:expr, $ty:ty) => {{
        let address = resolve(&$slot, $name);
        if address == 0 {
            set_errno(libc::ENOSYS);
            return -1;
        }
        // SAFETY: `address` is libc's definition of `$name`, whose C signature is `$ty`.
        unsafe { std::mem::transmute::<usize, $ty>(address) }
    }};
}

/// # Safety
/// As libc's `fsync`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fsync(fd: c_int) -> c_int {
    if let Err(code) = before_sync() {
        return code;
    }
    let real = real!(REAL_FSYNC, c"fsync", unsafe extern "C" fn(c_int) -> c_int);
    // SAFETY: forwarding the caller's arguments unchanged.
    unsafe { real(fd) }
}

/// # Safety
/// As libc's `fdatasync`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fdatasync(fd: c_int) -> c_int {
    if let Err(code) = before_sync() {
        return code;
    }
    let real = real!(
        REAL_FDATASYNC,
        c"fdatasync",
        unsafe extern "C" fn(c_int) -> c_int
    );
    // SAFETY: forwarding the caller's arguments unchanged.
    unsafe { real(fd) }
}

/// # Safety
/// As libc's `sync_file_range`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sync_file_range(
    fd: c_int,
    offset: libc::off64_t,
    nbytes: libc::off64_t,
    flags: c_uint,
) -> c_int {
    if let Err(code) = before_sync() {
        return code;
    }
    let real = real!(
        REAL_SYNC_FILE_RANGE,
        c"sync_file_range",
        unsafe extern "C" fn(c_int, libc::off64_t, libc::off64_t, c_uint) -> c_int
    );
    // SAFETY: forwarding the caller's arguments unchanged.
    unsafe { real(fd, offset, nbytes, flags) }
}

/// # Safety
/// As libc's `write`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn write(fd: c_int, buf: *const c_void, count: libc::size_t) -> isize {
    if write_refused(fd) {
        set_errno(libc::ENOSPC);
        return -1;
    }
    let real = real!(
        REAL_WRITE,
        c"write",
        unsafe extern "C" fn(c_int, *const c_void, libc::size_t) -> isize
    );
    // SAFETY: forwarding the caller's arguments unchanged.
    unsafe { real(fd, buf, count) }
}

/// # Safety
/// As libc's `pwrite`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pwrite(
    fd: c_int,
    buf: *const c_void,
    count: libc::size_t,
    offset: libc::off_t,
) -> isize {
    if write_refused(fd) {
        set_errno(libc::ENOSPC);
        return -1;
    }
    let real = real!(
        REAL_PWRITE,
        c"pwrite",
        unsafe extern "C" fn(c_int, *const c_void, libc::size_t, libc::off_t) -> isize
    );
    // SAFETY: forwarding the caller's arguments unchanged.
    unsafe { real(fd, buf, count, offset) }
}

/// # Safety
/// As libc's `pwrite64`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pwrite64(
    fd: c_int,
    buf: *const c_void,
    count: libc::size_t,
    offset: libc::off64_t,
) -> isize {
    if write_refused(fd) {
        set_errno(libc::ENOSPC);
        return -1;
    }
    let real = real!(
        REAL_PWRITE64,
        c"pwrite64",
        unsafe extern "C" fn(c_int, *const c_void, libc::size_t, libc::off64_t) -> isize
    );
    // SAFETY: forwarding the caller's arguments unchanged.
    unsafe { real(fd, buf, count, offset) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_control_word_parses_to_its_mode() {
        assert_eq!(Control::parse(b"ok\n"), Control::Ok);
        assert_eq!(Control::parse(b"fail-sync"), Control::FailSync);
        assert_eq!(Control::parse(b"  enospc-write \n"), Control::EnospcWrite);
        assert_eq!(
            Control::parse(b"slow-sync 120\n"),
            Control::SlowSync { ms: 120 }
        );
    }

    #[test]
    fn only_the_first_line_counts() {
        assert_eq!(Control::parse(b"fail-sync\nok\n"), Control::FailSync);
        assert_eq!(Control::parse(b"\nfail-sync\n"), Control::Ok);
    }

    #[test]
    fn unknown_or_malformed_content_means_no_fault() {
        for content in [
            &b""[..],
            b"fail-sync now",
            b"slow-sync",
            b"slow-sync -5",
            b"slow-sync 5ms",
            b"slow-sync 99999999999999999999999",
            b"FAIL-SYNC",
            b"\xff\xfe",
        ] {
            assert_eq!(
                Control::parse(content),
                Control::Ok,
                "{:?}",
                String::from_utf8_lossy(content)
            );
        }
    }

    #[test]
    fn a_slow_sync_longer_than_the_maximum_is_capped() {
        assert_eq!(
            Control::parse(b"slow-sync 3600000"),
            Control::SlowSync {
                ms: SLOW_SYNC_MS_MAX
            }
        );
    }

    #[test]
    fn modes_round_trip_through_their_atomic_encoding() {
        for control in [
            Control::Ok,
            Control::FailSync,
            Control::SlowSync { ms: 7 },
            Control::EnospcWrite,
        ] {
            let (mode, ms) = control.encode();
            assert_eq!(Control::decode(mode, ms), control);
        }
    }
}
