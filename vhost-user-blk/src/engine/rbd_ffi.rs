//! The part of librados/librbd's C API the RBD engine uses, loaded with
//! dlopen(3) at run time (`librbd.so.1`, which brings `librados.so.2`).
//!
//! Why not link at build time: the daemon must build, and serve files,
//! on a host without Ceph's development packages (CI builds before it
//! installs anything; most hosts never serve RBD), so librbd is only
//! looked for when an `rbd:` disk is opened, and its absence is a clear
//! start-up error. Why not a crate: `ceph` (ceph-rust) wraps librados
//! only and links it at build time; `librbd-sys` 0.1.0 links librbd at
//! build time and predates `rbd_aio_readv/writev`, `rbd_aio_write_zeroes`,
//! `rbd_set_image_notification` and `rbd_poll_io_events`. The surface is
//! 23 functions, declared here from `<rados/librados.h>` and
//! `<rbd/librbd.h>` (Ceph 16).

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::sync::OnceLock;

/// `rados_t`.
pub type Rados = *mut c_void;
/// `rados_ioctx_t`.
pub type IoCtx = *mut c_void;
/// `rbd_image_t`.
pub type Image = *mut c_void;
/// `rbd_completion_t`.
pub type Completion = *mut c_void;
/// `rbd_callback_t`.
pub type Callback = Option<unsafe extern "C" fn(Completion, *mut c_void)>;

/// `EVENT_TYPE_EVENTFD` (librbd.h): completions signalled on an eventfd.
pub const EVENT_TYPE_EVENTFD: c_int = 2;

/// The functions, resolved once per process.
#[allow(missing_docs)]
#[derive(Debug)]
pub struct Api {
    pub rados_create: unsafe extern "C" fn(*mut Rados, *const c_char) -> c_int,
    pub rados_conf_read_file: unsafe extern "C" fn(Rados, *const c_char) -> c_int,
    pub rados_conf_set: unsafe extern "C" fn(Rados, *const c_char, *const c_char) -> c_int,
    pub rados_connect: unsafe extern "C" fn(Rados) -> c_int,
    pub rados_shutdown: unsafe extern "C" fn(Rados),
    pub rados_ioctx_create: unsafe extern "C" fn(Rados, *const c_char, *mut IoCtx) -> c_int,
    pub rados_ioctx_destroy: unsafe extern "C" fn(IoCtx),
    pub rbd_open: unsafe extern "C" fn(IoCtx, *const c_char, *mut Image, *const c_char) -> c_int,
    pub rbd_open_read_only:
        unsafe extern "C" fn(IoCtx, *const c_char, *mut Image, *const c_char) -> c_int,
    pub rbd_close: unsafe extern "C" fn(Image) -> c_int,
    pub rbd_get_size: unsafe extern "C" fn(Image, *mut u64) -> c_int,
    pub rbd_flush: unsafe extern "C" fn(Image) -> c_int,
    pub rbd_set_image_notification: unsafe extern "C" fn(Image, c_int, c_int) -> c_int,
    pub rbd_poll_io_events: unsafe extern "C" fn(Image, *mut Completion, c_int) -> c_int,
    pub rbd_aio_create_completion:
        unsafe extern "C" fn(*mut c_void, Callback, *mut Completion) -> c_int,
    pub rbd_aio_get_return_value: unsafe extern "C" fn(Completion) -> isize,
    pub rbd_aio_get_arg: unsafe extern "C" fn(Completion) -> *mut c_void,
    pub rbd_aio_release: unsafe extern "C" fn(Completion),
    pub rbd_aio_readv:
        unsafe extern "C" fn(Image, *const libc::iovec, c_int, u64, Completion) -> c_int,
    pub rbd_aio_writev:
        unsafe extern "C" fn(Image, *const libc::iovec, c_int, u64, Completion) -> c_int,
    pub rbd_aio_flush: unsafe extern "C" fn(Image, Completion) -> c_int,
    pub rbd_aio_discard: unsafe extern "C" fn(Image, u64, u64, Completion) -> c_int,
    pub rbd_aio_write_zeroes:
        unsafe extern "C" fn(Image, u64, usize, Completion, c_int, c_int) -> c_int,
}

/// The library that provides them.
pub const LIBRARY: &CStr = c"librbd.so.1";

/// librbd, loaded on first use; `Err` names what is missing.
pub fn api() -> Result<&'static Api, String> {
    static API: OnceLock<Result<Api, String>> = OnceLock::new();
    API.get_or_init(load).as_ref().map_err(Clone::clone)
}

fn dl_error() -> String {
    // SAFETY: dlerror returns NULL or a NUL-terminated string owned by
    // libdl, valid until the next dl* call on this thread; copied at once.
    let e = unsafe { libc::dlerror() };
    if e.is_null() {
        "unknown dlopen error".into()
    } else {
        // SAFETY: non-NULL, NUL-terminated (see above).
        unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned()
    }
}

// Each transmute's target is the `Api` field it initialises (inferred from
// the struct literal), so the signature is written once, in `Api`.
#[allow(clippy::missing_transmute_annotations)]
fn load() -> Result<Api, String> {
    // SAFETY: dlopen of a shared library by soname; its constructors run
    // (librbd's and librados' static initialisers, which only set up
    // their own state). The handle is never closed: the functions below
    // stay valid for the life of the process.
    let handle = unsafe { libc::dlopen(LIBRARY.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if handle.is_null() {
        return Err(dl_error());
    }
    macro_rules! sym {
        ($name:ident) => {{
            let name = concat!(stringify!($name), "\0");
            // SAFETY: dlsym on the open handle with a NUL-terminated name;
            // librbd.so.1's dependencies (librados.so.2) are searched too.
            let p = unsafe { libc::dlsym(handle, name.as_ptr().cast()) };
            if p.is_null() {
                return Err(format!("{}: {}", stringify!($name), dl_error()));
            }
            // SAFETY: the symbol is the C function of that name in Ceph 16's
            // headers, whose signature the field's type repeats exactly.
            unsafe { std::mem::transmute::<*mut c_void, _>(p) }
        }};
    }
    Ok(Api {
        rados_create: sym!(rados_create),
        rados_conf_read_file: sym!(rados_conf_read_file),
        rados_conf_set: sym!(rados_conf_set),
        rados_connect: sym!(rados_connect),
        rados_shutdown: sym!(rados_shutdown),
        rados_ioctx_create: sym!(rados_ioctx_create),
        rados_ioctx_destroy: sym!(rados_ioctx_destroy),
        rbd_open: sym!(rbd_open),
        rbd_open_read_only: sym!(rbd_open_read_only),
        rbd_close: sym!(rbd_close),
        rbd_get_size: sym!(rbd_get_size),
        rbd_flush: sym!(rbd_flush),
        rbd_set_image_notification: sym!(rbd_set_image_notification),
        rbd_poll_io_events: sym!(rbd_poll_io_events),
        rbd_aio_create_completion: sym!(rbd_aio_create_completion),
        rbd_aio_get_return_value: sym!(rbd_aio_get_return_value),
        rbd_aio_get_arg: sym!(rbd_aio_get_arg),
        rbd_aio_release: sym!(rbd_aio_release),
        rbd_aio_readv: sym!(rbd_aio_readv),
        rbd_aio_writev: sym!(rbd_aio_writev),
        rbd_aio_flush: sym!(rbd_aio_flush),
        rbd_aio_discard: sym!(rbd_aio_discard),
        rbd_aio_write_zeroes: sym!(rbd_aio_write_zeroes),
    })
}

/// A string for C (option values and names from the command line; a NUL
/// inside is refused by the spec parser before it gets here).
pub fn cstr(s: &str) -> CString {
    CString::new(s.replace('\0', "")).unwrap_or_default()
}
