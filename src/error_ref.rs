//! Quiet errors. A notice in a chat says what failed and gives a short reference ("Echo
//! could not answer (ref 7f3a1c)"); the error itself goes to the service's log under the
//! same reference, where the operator finds it. Error texts are not for the people in a
//! chat: they can carry an agent program's stderr, a model provider's answer, paths and
//! addresses of the service's machine.

use std::fmt;

/// A short random reference that ties a notice in a chat to its line in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorRef(String);

impl ErrorRef {
    /// Six hex digits: short enough to read out, and with the log line's time they name
    /// one failure.
    pub fn new() -> Self {
        Self(crate::secrets::random_hex(3))
    }

    /// The line people see: `what` failed, and this reference.
    pub fn notice(&self, what: &str) -> String {
        format!("{what} (ref {self})")
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for ErrorRef {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for ErrorRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Logs `error` as a warning under a new reference and returns the line for the chat:
/// `what` and the reference, never the error. Callers with more to log (the agent, the
/// conversation) log it themselves with an [`ErrorRef`] and use [`ErrorRef::notice`].
pub fn report(what: &str, error: &dyn fmt::Display) -> String {
    let reference = ErrorRef::new();
    tracing::warn!(r#ref = %reference, %error, "{what}");
    reference.notice(what)
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Log output collected in memory.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_notice_names_the_reference_and_the_log_holds_the_error() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).finish();
        let notice = tracing::subscriber::with_default(subscriber, || {
            report("Echo could not answer", &"exit status 1: API_KEY=sk-secret")
        });
        let reference = notice.strip_prefix("Echo could not answer (ref ").and_then(|r| r.strip_suffix(')')).unwrap();
        assert_eq!(reference.len(), 6);
        assert!(reference.chars().all(|c| c.is_ascii_hexdigit()), "{reference}");
        assert!(!notice.contains("sk-secret"), "{notice}");
        let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert!(log.contains(&format!("ref={reference}")), "{log}");
        assert!(log.contains("sk-secret") && log.contains("Echo could not answer"), "{log}");
    }

    #[test]
    fn references_differ() {
        let references: std::collections::HashSet<String> = (0..20).map(|_| ErrorRef::new().to_string()).collect();
        assert!(references.len() > 1);
    }
}
