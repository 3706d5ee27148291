//! The optional copy of each audit record to the local syslog (journald
//! reads it too), for sites that collect logs centrally. Paths are left out
//! unless asked for: syslog is usually readable more widely than the
//! encrypted trail, and paths can name patients.

use super::record::Record;
use std::ffi::CString;
use std::sync::Once;

static OPEN: Once = Once::new();

/// Sends `record` as JSON to syslog (facility AUTHPRIV: readable by root
/// only on most systems; refused attempts at NOTICE, the rest at INFO).
pub fn send(record: &Record, host: &str, with_paths: bool) {
    OPEN.call_once(|| {
        // SAFETY: the ident is a 'static C string, as openlog requires
        // (it keeps the pointer).
        unsafe { libc::openlog(c"s3vault-audit".as_ptr(), libc::LOG_PID, libc::LOG_AUTHPRIV) };
    });
    let mut copy = record.clone();
    if !with_paths {
        copy.path = None;
        copy.new_path = None;
    }
    let mut value = serde_json::to_value(&copy).expect("records serialize");
    value["host"] = host.into();
    let Ok(message) = CString::new(value.to_string()) else {
        return;
    };
    let level = if record.is_denied() {
        libc::LOG_NOTICE
    } else {
        libc::LOG_INFO
    };
    // SAFETY: a constant "%s" format with one NUL-terminated argument.
    unsafe { libc::syslog(level, c"%s".as_ptr(), message.as_ptr()) };
}
