//! Backgrounding a mount: `s3vault mount` returns only when the mount is
//! usable, or fails with the daemon's own error message and exit code.
//!
//! The process forks before any thread exists (tokio starts later, in the
//! child); the parent waits on a pipe for the child's verdict.

use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Arc;

/// Starts a line of progress on the pipe (the verdict's first line is a
/// number).
const PROGRESS: &str = "~ ";

pub enum Role {
    /// The original process: exit with this code.
    Parent(i32),
    /// The daemon: report readiness through this.
    Daemon(Readiness),
}

/// The daemon's end of the pipe to the waiting parent (or nothing, in
/// the foreground).
pub struct Readiness(Option<Arc<File>>);

impl Readiness {
    pub fn foreground() -> Readiness {
        Readiness(None)
    }

    /// Tells the parent (or systemd, for a `Type=notify` service) that the
    /// mount is ready (`Ok`), or the parent why it failed.
    pub fn report(mut self, result: Result<(), (i32, String)>) {
        if result.is_ok() {
            notify_systemd("READY=1");
        }
        let Some(pipe) = self.0.take() else { return };
        let message = match result {
            Ok(()) => "0\n".to_string(),
            Err((code, message)) => format!("{code}\n{message}"),
        };
        let _ = (&*pipe).write_all(message.as_bytes());
    }

    /// Something to say while the mount is not ready yet: the waiting
    /// parent prints it on its terminal (in the foreground, printed here,
    /// on a terminal only). Whatever holds this must be gone before
    /// `report`, or the parent waits for it.
    pub fn progress(&self) -> impl Fn(&str) + Send + Sync + 'static {
        let pipe = self.0.clone();
        let terminal = std::io::stderr().is_terminal();
        move |line: &str| match &pipe {
            Some(pipe) => {
                let _ = (&**pipe).write_all(format!("{PROGRESS}{}\n", line.replace('\n', " ")).as_bytes());
            }
            None if terminal => eprintln!("s3vault: {line}"),
            None => {}
        }
    }

    pub fn is_background(&self) -> bool {
        self.0.is_some()
    }
}

/// Forks; must be called while the process is single-threaded.
pub fn fork() -> std::io::Result<Role> {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 writes two descriptors into the array we own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: the caller guarantees no other thread exists, so the child
    // inherits no lock held by a thread that does not exist there.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()),
        0 => {
            drop(read);
            // SAFETY: setsid has no memory-safety preconditions; detaches
            // the daemon from the terminal's session.
            unsafe { libc::setsid() };
            Ok(Role::Daemon(Readiness(Some(Arc::new(File::from(write))))))
        }
        _child => {
            drop(write);
            let terminal = std::io::stderr().is_terminal();
            let mut pipe = BufReader::new(File::from(read));
            let mut code = String::new();
            loop {
                code.clear();
                if pipe.read_line(&mut code).unwrap_or(0) == 0 {
                    break;
                }
                match code.strip_prefix(PROGRESS) {
                    Some(line) if terminal => eprintln!("s3vault: {}", line.trim_end()),
                    Some(_) => {}
                    None => break,
                }
            }
            let mut message = String::new();
            let _ = pipe.read_to_string(&mut message);
            Ok(Role::Parent(match code.trim_end().parse::<i32>() {
                Ok(0) => 0,
                Ok(code) => {
                    eprintln!("s3vault: {message}");
                    code
                }
                Err(_) => {
                    eprintln!("s3vault: the mount daemon exited before the mount was ready");
                    1
                }
            }))
        }
    }
}

/// Points stdin/stdout at /dev/null and stderr at `log`, once the parent
/// has gone and the terminal may close.
pub fn detach_stdio(log: &std::path::Path) -> std::io::Result<()> {
    let null = File::options().read(true).write(true).open("/dev/null")?;
    let log = File::options().create(true).append(true).open(log)?;
    use std::os::fd::AsRawFd;
    // SAFETY: dup2 onto the standard descriptors; both sources are open.
    unsafe {
        libc::dup2(null.as_raw_fd(), 0);
        libc::dup2(null.as_raw_fd(), 1);
        libc::dup2(log.as_raw_fd(), 2);
    }
    Ok(())
}

/// Sends a state line to systemd's notification socket when we run as a
/// `Type=notify` service (NOTIFY_SOCKET set); does nothing otherwise.
pub fn notify_systemd(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = (|| -> std::io::Result<()> {
        let socket = std::os::unix::net::UnixDatagram::unbound()?;
        let bytes = path.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(state.as_bytes(), &addr)?;
        } else {
            socket.send_to(state.as_bytes(), &path)?;
        }
        Ok(())
    })();
    if let Err(e) = sent {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

#[cfg(test)]
mod tests {
    use super::notify_systemd;

    #[test]
    fn notifies_a_listening_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        // SAFETY: no other thread of this test reads or writes NOTIFY_SOCKET.
        unsafe { std::env::set_var("NOTIFY_SOCKET", &path) };
        notify_systemd("READY=1");
        unsafe { std::env::remove_var("NOTIFY_SOCKET") };
        let mut buf = [0u8; 16];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }
}
