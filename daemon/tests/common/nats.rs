//! A real `nats-server` with JetStream for the event-bridge tests: started on a free
//! loopback port with its own store directory, stoppable and restartable on the same port
//! and store. `.ci/run` installs the binary (Debian's package) and sets
//! `HUSKIES_REQUIRE_NATS`, so CI fails rather than skips; elsewhere a machine without it
//! skips these tests with a loud message.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use huskies_core::Envelope;

/// The server binary, if installed.
fn binary() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/usr/bin", "/usr/local/bin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
}

/// One server process and its store.
pub struct NatsServer {
    bin: PathBuf,
    child: Option<Child>,
    /// Its client port on 127.0.0.1.
    pub port: u16,
    store: tempfile::TempDir,
}

impl NatsServer {
    /// Starts a server, or `None` (with a message on stderr) when the binary is absent.
    pub fn start() -> Option<NatsServer> {
        let Some(bin) = binary() else {
            assert!(
                std::env::var_os("HUSKIES_REQUIRE_NATS").is_none(),
                "HUSKIES_REQUIRE_NATS is set (CI) but nats-server is not installed"
            );
            eprintln!(
                "\n!!!!! SKIPPED: nats-server is not installed (apt-get install -y nats-server); \
                 .ci/run installs it so CI never skips this test !!!!!\n"
            );
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut s = NatsServer {
            bin,
            child: None,
            port,
            store: tempfile::tempdir().unwrap(),
        };
        s.restart();
        Some(s)
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the process again on the same port and store (after [`NatsServer::stop`]).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new(&self.bin)
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd"])
            .arg(self.store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the process gracefully (SIGTERM) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Every envelope in `stream`, in stream order (empty when the stream does not exist).
    pub async fn envelopes(&self, stream: &str) -> Vec<Envelope> {
        let client = async_nats::connect(self.url())
            .await
            .expect("connects to nats-server");
        let js = async_nats::jetstream::new(client);
        let Ok(mut s) = js.get_stream(stream).await else {
            return Vec::new();
        };
        let state = s.info().await.expect("stream info").state.clone();
        let mut out = Vec::new();
        if state.messages == 0 {
            return out;
        }
        for seq in state.first_sequence..=state.last_sequence {
            if let Ok(m) = s.get_raw_message(seq).await {
                let env: Envelope = serde_json::from_slice(&m.payload).expect("each message is one envelope");
                assert_eq!(m.subject.as_str(), env.subject(), "published on its own subject");
                out.push(env);
            }
        }
        out
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
