//! The network between replicas, as the harness controls it in local-process mode: no root, no iptables, just a TCP
//! [`Proxy`] on every directed link. See [`proxy`] for the fault model of one link.

pub mod proxy;

pub use proxy::{DirStats, Direction, Fault, Proxy, ProxyStats};

#[cfg(test)]
/// Small TCP targets and probes for the proxy and grid tests.
#[cfg(test)]
pub(crate) mod testkit {
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::mpsc;

    /// How long a probe waits before calling a flow blocked. Generous against a loaded 2-core machine, small
    /// enough to keep the suite fast; blocked probes run concurrently.
    pub const BLOCKED: Duration = Duration::from_millis(300);

    /// A line server: records each line it receives, replies `re:<line>`. Returns its address and the record.
    pub async fn line_server() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let record = record.clone();
                tokio::spawn(async move {
                    let (r, mut w) = stream.into_split();
                    let mut lines = BufReader::new(r).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        record.lock().unwrap().push(line.clone());
                        if w.write_all(format!("re:{line}\n").as_bytes()).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        (addr, seen)
    }

    /// A target that hands each accepted connection to the test, so it holds both ends of a proxied connection.
    pub async fn raw_server() -> (SocketAddr, mpsc::UnboundedReceiver<TcpStream>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                if tx.send(stream).is_err() {
                    break;
                }
            }
        });
        (addr, rx)
    }

    /// Reads exactly `n` bytes, or `None` on timeout, EOF or error.
    pub async fn read_n(stream: &mut TcpStream, n: usize, within: Duration) -> Option<Vec<u8>> {
        let mut buf = vec![0; n];
        match tokio::time::timeout(within, stream.read_exact(&mut buf)).await {
            Ok(Ok(_)) => Some(buf),
            _ => None,
        }
    }

    /// A request/response exchange on an open connection: sends `line`, waits for one reply line.
    pub struct Client {
        lines: tokio::io::Lines<BufReader<tokio::net::tcp::OwnedReadHalf>>,
        w: tokio::net::tcp::OwnedWriteHalf,
    }

    impl Client {
        pub async fn connect(addr: SocketAddr) -> Client {
            let (r, w) = TcpStream::connect(addr).await.unwrap().into_split();
            Client { lines: BufReader::new(r).lines(), w }
        }

        pub async fn send(&mut self, line: &str) {
            self.w.write_all(format!("{line}\n").as_bytes()).await.unwrap();
        }

        /// The next reply, or `None` if none came within `within`.
        pub async fn reply(&mut self, within: Duration) -> Option<String> {
            tokio::time::timeout(within, self.lines.next_line()).await.ok().and_then(|r| r.ok()).flatten()
        }

        pub async fn request(&mut self, line: &str, within: Duration) -> Option<String> {
            self.send(line).await;
            self.reply(within).await
        }
    }
}
