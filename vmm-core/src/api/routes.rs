//! The control API's endpoints, mapped onto what a running VM can do:
//!
//! | request            | reply                                         |
//! |--------------------|-----------------------------------------------|
//! | `GET /vm/info`     | 200, JSON: state, vCPUs, memory, devices, exits |
//! | `PUT /vm/pause`    | 204; 409 when already paused                  |
//! | `PUT /vm/resume`   | 204; 409 when not paused                      |
//! | `PUT /vm/shutdown` | 204, then the VMM exits with status 0         |
//!
//! A known path with another method gets 405, anything else 404.

use crate::cpu::pause::PauseError;

use super::http::{Request, Response};

/// Why a control request failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Pause(#[from] PauseError),
    #[error("KVM {0} failed")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
}

/// What the API can ask of the VM.
pub trait VmControl {
    fn info(&self) -> serde_json::Value;
    fn pause(&self) -> Result<(), ControlError>;
    fn resume(&self) -> Result<(), ControlError>;
    fn shutdown(&self);
}

fn status_of(e: &ControlError) -> u16 {
    match e {
        ControlError::Pause(PauseError::AlreadyPaused | PauseError::NotPaused) => 409,
        _ => 500,
    }
}

fn done(r: Result<(), ControlError>) -> Response {
    match r {
        Ok(()) => Response::no_content(),
        Err(e) => Response::error(status_of(&e), &error_chain(&e)),
    }
}

/// The error with its causes, one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// Answers one request.
pub fn route(req: &Request, vm: &dyn VmControl) -> Response {
    let path = req.path.split('?').next().unwrap_or("");
    match (req.method.as_str(), path) {
        ("GET", "/vm/info") => Response::json(200, vm.info().to_string()),
        ("PUT", "/vm/pause") => done(vm.pause()),
        ("PUT", "/vm/resume") => done(vm.resume()),
        ("PUT", "/vm/shutdown") => {
            vm.shutdown();
            Response::no_content()
        }
        (_, "/vm/info" | "/vm/pause" | "/vm/resume" | "/vm/shutdown") => {
            Response::error(405, &format!("{} is not allowed on {path}", req.method))
        }
        _ => Response::error(404, &format!("no endpoint {path}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// Records calls; pause state kept as the real controller keeps it.
    #[derive(Default)]
    struct Recorder {
        paused: RefCell<bool>,
        calls: RefCell<Vec<&'static str>>,
    }

    impl VmControl for Recorder {
        fn info(&self) -> serde_json::Value {
            serde_json::json!({ "state": if *self.paused.borrow() { "paused" } else { "running" } })
        }
        fn pause(&self) -> Result<(), ControlError> {
            self.calls.borrow_mut().push("pause");
            if self.paused.replace(true) {
                return Err(PauseError::AlreadyPaused.into());
            }
            Ok(())
        }
        fn resume(&self) -> Result<(), ControlError> {
            self.calls.borrow_mut().push("resume");
            if !self.paused.replace(false) {
                return Err(PauseError::NotPaused.into());
            }
            Ok(())
        }
        fn shutdown(&self) {
            self.calls.borrow_mut().push("shutdown");
        }
    }

    fn req(method: &str, path: &str) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            body: Vec::new(),
        }
    }

    #[test]
    fn endpoints_map_to_actions_with_the_right_statuses() {
        let vm = Recorder::default();
        assert_eq!(route(&req("PUT", "/vm/pause"), &vm).status, 204);
        assert_eq!(route(&req("PUT", "/vm/pause"), &vm).status, 409);
        let info = route(&req("GET", "/vm/info"), &vm);
        assert_eq!(info.status, 200);
        assert!(info.body.unwrap().contains("paused"));
        assert_eq!(route(&req("PUT", "/vm/resume"), &vm).status, 204);
        assert_eq!(route(&req("PUT", "/vm/resume"), &vm).status, 409);
        assert_eq!(route(&req("PUT", "/vm/shutdown"), &vm).status, 204);
        assert_eq!(
            *vm.calls.borrow(),
            ["pause", "pause", "resume", "resume", "shutdown"]
        );
    }

    #[test]
    fn wrong_methods_and_paths_are_refused_without_acting() {
        let vm = Recorder::default();
        assert_eq!(route(&req("GET", "/vm/pause"), &vm).status, 405);
        assert_eq!(route(&req("DELETE", "/vm/shutdown"), &vm).status, 405);
        assert_eq!(route(&req("GET", "/vm/nothing"), &vm).status, 404);
        assert_eq!(route(&req("GET", "/"), &vm).status, 404);
        assert!(vm.calls.borrow().is_empty());
    }
}
