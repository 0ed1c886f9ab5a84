//! The orchestrator's side of the worker processes: start them, hear their
//! phase reports, tell every one of them when the next phase starts.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::worker::Spec;

/// The longest any phase may take before the run is abandoned.
const PHASE_TIMEOUT: Duration = Duration::from_secs(300);

pub struct Workers {
    children: Vec<Child>,
    inputs: Vec<ChildStdin>,
    reports: Receiver<(usize, Value)>,
}

impl Workers {
    pub fn spawn(specs: &[Spec]) -> Workers {
        let (sender, reports) = channel();
        let mut children = Vec::new();
        let mut inputs = Vec::new();
        for (index, spec) in specs.iter().enumerate() {
            let mut child = Command::new(std::env::current_exe().expect("path of herald-bench"))
                .arg("worker")
                .arg(serde_json::to_string(spec).expect("spec as JSON"))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start a worker process");
            inputs.push(child.stdin.take().expect("piped stdin"));
            let output = child.stdout.take().expect("piped stdout");
            let sender = sender.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(output).lines().map_while(Result::ok) {
                    if let Ok(value) = serde_json::from_str(&line) {
                        let _ = sender.send((index, value));
                    }
                }
            });
            children.push(child);
        }
        Workers {
            children,
            inputs,
            reports,
        }
    }

    /// One report per worker for `phase`, in worker order.
    pub fn collect(&self, phase: &str) -> Vec<Value> {
        let mut reports: Vec<Option<Value>> = vec![None; self.children.len()];
        let deadline = Instant::now() + PHASE_TIMEOUT;
        while reports.iter().any(Option::is_none) {
            let left = deadline.saturating_duration_since(Instant::now());
            let (index, value) = self.reports.recv_timeout(left).unwrap_or_else(|_| {
                panic!("workers did not all report '{phase}' within {PHASE_TIMEOUT:?}")
            });
            if value["phase"] == phase {
                reports[index] = Some(value);
            }
        }
        reports.into_iter().flatten().collect()
    }

    /// Starts the next phase in every worker.
    pub fn tell(&mut self, message: &Value) {
        for input in &mut self.inputs {
            let _ = writeln!(input, "{message}");
        }
    }

    pub fn finish(mut self) {
        self.inputs.clear();
        for child in &mut self.children {
            let _ = child.wait();
        }
    }
}
