//! Packet delay without `sch_netem`: a thread in a container's network namespace that takes the packets iptables
//! sends to an `NFQUEUE` and hands each back to the kernel (`NF_ACCEPT`) `base + uniform(0, jitter)` after it
//! arrived. The Docker mode uses it when the kernel has no netem (see [`super::links`]); it speaks the
//! `nfnetlink_queue` protocol directly (no libnetfilter_queue).
//!
//! # Invariants
//!
//! * Only packet metadata is copied to the harness (`NFQNL_COPY_META`); packets are never altered, only released.
//! * The queue is bound with `NFQA_CFG_F_FAIL_OPEN` and a large maximum length, and the iptables rule carries
//!   `--queue-bypass`: a full queue or a harness without a listener lets packets through instead of dropping them.
//! * [`Delayer::stop`] releases every packet still held before it closes the socket (closing with packets queued
//!   would drop them). Remove the iptables rule first, so nothing new is queued meanwhile.
//!
//! # Caveats
//!
//! * Released packets can overtake each other (jitter), as with netem's jitter; TCP reorders them.
//! * A thread holds the namespace it entered: a container restarted meanwhile has a new namespace, which needs a
//!   new delayer (the cluster re-applies the fault to a restarted container).

use std::collections::BinaryHeap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The queue number the iptables rules send packets to (queues are per network namespace).
pub const QUEUE: u16 = 7;

const NETLINK_NETFILTER: i32 = 12;
const NFNL_SUBSYS_QUEUE: u16 = 3;
const NFQNL_MSG_PACKET: u16 = 0;
const NFQNL_MSG_VERDICT: u16 = 1;
const NFQNL_MSG_CONFIG: u16 = 2;
const NFQA_PACKET_HDR: u16 = 1;
const NFQA_VERDICT_HDR: u16 = 2;
const NFQA_CFG_CMD: u16 = 1;
const NFQA_CFG_PARAMS: u16 = 2;
const NFQA_CFG_QUEUE_MAXLEN: u16 = 3;
const NFQA_CFG_MASK: u16 = 4;
const NFQA_CFG_FLAGS: u16 = 5;
const NFQA_CFG_F_FAIL_OPEN: u32 = 1;
const NFQNL_CFG_CMD_BIND: u8 = 1;
const NFQNL_COPY_META: u8 = 1;
const NF_ACCEPT: u32 = 1;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const MAX_QUEUED: u32 = 65_536;

/// A running delayer. See the module docs.
pub struct Delayer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Delayer {
    /// Enters the network namespace of process `pid`, binds [`QUEUE`] there and starts holding its packets.
    /// Returns once the queue is bound, or with the reason it could not be.
    pub fn start(pid: u32, base: Duration, jitter: Duration, seed: u64) -> io::Result<Delayer> {
        let namespace = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (ready, bound) = mpsc::channel();
        let flag = stop.clone();
        let thread = std::thread::Builder::new().name(format!("delay-{pid}")).spawn(move || {
            // SAFETY: setns on this thread only, with a namespace fd we own.
            if unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                let _ = ready.send(Err(io::Error::last_os_error()));
                return;
            }
            match Queue::bind(QUEUE) {
                Ok(queue) => {
                    let _ = ready.send(Ok(()));
                    queue.hold(base, jitter, &mut StdRng::seed_from_u64(seed), &flag);
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                }
            }
        })?;
        match bound.recv() {
            Ok(Ok(())) => Ok(Delayer { stop, thread: Some(thread) }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => Err(io::Error::other("the delayer thread ended before binding its queue")),
        }
    }

    /// Releases every packet held and ends the thread.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Delayer {
    fn drop(&mut self) {
        self.halt();
    }
}

/// A netlink socket bound to one nfqueue.
struct Queue {
    fd: OwnedFd,
    queue: u16,
}

/// Appends a netlink attribute (4-byte aligned).
fn attr(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(payload);
    buf.resize(buf.len().next_multiple_of(4), 0);
}

/// An nfqueue message: netlink header, nfgenmsg for `queue`, attributes.
pub(crate) fn message(kind: u16, flags: u16, queue: u16, attrs: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut buf = vec![0u8; 16];
    buf.extend_from_slice(&[libc::AF_UNSPEC as u8, 0]);
    buf.extend_from_slice(&queue.to_be_bytes());
    attrs(&mut buf);
    let len = buf.len() as u32;
    buf[0..4].copy_from_slice(&len.to_ne_bytes());
    buf[4..6].copy_from_slice(&((NFNL_SUBSYS_QUEUE << 8) | kind).to_ne_bytes());
    buf[6..8].copy_from_slice(&flags.to_ne_bytes());
    buf
}

/// The verdict message accepting packet `id` of `queue`.
pub(crate) fn verdict(queue: u16, id: u32) -> Vec<u8> {
    message(NFQNL_MSG_VERDICT, NLM_F_REQUEST, queue, |b| {
        let mut hdr = NF_ACCEPT.to_be_bytes().to_vec();
        hdr.extend_from_slice(&id.to_be_bytes());
        attr(b, NFQA_VERDICT_HDR, &hdr);
    })
}

/// What a buffer of netlink messages holds: packet ids, and the errors of negative acknowledgements.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Received {
    pub packets: Vec<u32>,
    pub errors: Vec<i32>,
}

/// Parses the netlink messages in `buf`.
pub(crate) fn parse(buf: &[u8]) -> Received {
    let mut out = Received::default();
    let mut at = 0;
    while at + 16 <= buf.len() {
        let len = u32::from_ne_bytes(buf[at..at + 4].try_into().expect("4 bytes")) as usize;
        let kind = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
        if len < 16 || at + len > buf.len() {
            break;
        }
        let body = &buf[at + 16..at + len];
        if kind == NLMSG_ERROR && body.len() >= 4 {
            let code = i32::from_ne_bytes(body[..4].try_into().expect("4 bytes"));
            if code != 0 {
                out.errors.push(-code);
            }
        } else if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET && body.len() >= 4 {
            let mut a = 4;
            while a + 4 <= body.len() {
                let alen = u16::from_ne_bytes([body[a], body[a + 1]]) as usize;
                let akind = u16::from_ne_bytes([body[a + 2], body[a + 3]]) & 0x3fff;
                if alen < 4 || a + alen > body.len() {
                    break;
                }
                if akind == NFQA_PACKET_HDR && alen >= 8 {
                    out.packets.push(u32::from_be_bytes(body[a + 4..a + 8].try_into().expect("4 bytes")));
                }
                a += alen.next_multiple_of(4);
            }
        }
        at += len.next_multiple_of(4);
    }
    out
}

impl Queue {
    fn bind(queue: u16) -> io::Result<Queue> {
        // SAFETY: plain socket calls; the fd is owned by the OwnedFd from here on.
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, NETLINK_NETFILTER) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh, valid descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let size: libc::c_int = 16 << 20;
        // SAFETY: a valid fd and an int option. Best effort: a smaller buffer still works under light load.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        let q = Queue { fd, queue };
        q.request(message(NFQNL_MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, queue, |b| {
            attr(b, NFQA_CFG_CMD, &[NFQNL_CFG_CMD_BIND, 0, 0, libc::AF_INET as u8]);
        }))?;
        q.request(message(NFQNL_MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, queue, |b| {
            let mut params = 0u32.to_be_bytes().to_vec();
            params.push(NFQNL_COPY_META);
            attr(b, NFQA_CFG_PARAMS, &params);
            attr(b, NFQA_CFG_QUEUE_MAXLEN, &MAX_QUEUED.to_be_bytes());
            attr(b, NFQA_CFG_MASK, &NFQA_CFG_F_FAIL_OPEN.to_be_bytes());
            attr(b, NFQA_CFG_FLAGS, &NFQA_CFG_F_FAIL_OPEN.to_be_bytes());
        }))?;
        Ok(q)
    }

    fn send(&self, buf: &[u8]) -> io::Result<()> {
        // SAFETY: sending a buffer we own on a valid fd; the kernel is the destination (a zeroed sockaddr_nl).
        let mut to: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        to.nl_family = libc::AF_NETLINK as u16;
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                0,
                (&to as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Receives what is there within `timeout` (none: nothing came).
    fn receive(&self, buf: &mut [u8], timeout: Duration) -> io::Result<Option<usize>> {
        let mut poll = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let ms = timeout.as_millis().min(1000) as libc::c_int;
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut poll, 1, ms) };
        if ready < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted { Ok(None) } else { Err(e) };
        }
        if ready == 0 {
            return Ok(None);
        }
        // SAFETY: receiving into a buffer we own.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
                // ENOBUFS: notifications were lost (the packets stay queued until the fail-open limit); go on.
                _ if e.raw_os_error() == Some(libc::ENOBUFS) => Ok(None),
                _ => Err(e),
            };
        }
        Ok(Some(n as usize))
    }

    /// Sends a configuration request and waits for its acknowledgement.
    fn request(&self, msg: Vec<u8>) -> io::Result<()> {
        self.send(&msg)?;
        let mut buf = vec![0u8; 8192];
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Some(n) = self.receive(&mut buf, Duration::from_millis(200))? {
                let got = parse(&buf[..n]);
                if let Some(errno) = got.errors.first() {
                    return Err(io::Error::from_raw_os_error(*errno));
                }
                return Ok(());
            }
        }
        Err(io::Error::new(io::ErrorKind::TimedOut, "no acknowledgement from nfnetlink_queue"))
    }

    /// Holds every packet `base + uniform(0, jitter)`, until `stop`; then releases what it still holds.
    fn hold(&self, base: Duration, jitter: Duration, rng: &mut StdRng, stop: &AtomicBool) {
        let mut held: BinaryHeap<std::cmp::Reverse<(Instant, u32)>> = BinaryHeap::new();
        let mut buf = vec![0u8; 1 << 16];
        let jitter_us = jitter.as_micros() as u64;
        loop {
            let stopping = stop.load(Ordering::Relaxed);
            let now = Instant::now();
            let mut out = Vec::new();
            while let Some(std::cmp::Reverse((due, id))) = held.peek().copied() {
                if due > now && !stopping {
                    break;
                }
                held.pop();
                out.extend(verdict(self.queue, id));
                if out.len() > 32 * 1024 {
                    let _ = self.send(&out);
                    out.clear();
                }
            }
            if !out.is_empty() {
                let _ = self.send(&out);
            }
            if stopping {
                return;
            }
            let wait = held.peek().map_or(Duration::from_millis(20), |r| r.0 .0.saturating_duration_since(now));
            // Wait for the first notification, then drain what is already there (one packet per datagram).
            let mut timeout = wait.min(Duration::from_millis(20));
            for _ in 0..256 {
                match self.receive(&mut buf, timeout) {
                    Ok(Some(n)) => {
                        let arrived = Instant::now();
                        for id in parse(&buf[..n]).packets {
                            let extra = if jitter_us == 0 { 0 } else { rng.gen_range(0..=jitter_us) };
                            held.push(std::cmp::Reverse((arrived + base + Duration::from_micros(extra), id)));
                        }
                        timeout = Duration::ZERO;
                    }
                    Ok(None) => break,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(5));
                        break;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verdict_accepts_one_packet_of_the_queue() {
        let v = verdict(7, 0x0102_0304);
        assert_eq!(v.len(), 32);
        assert_eq!(u32::from_ne_bytes(v[0..4].try_into().unwrap()), 32);
        assert_eq!(u16::from_ne_bytes([v[4], v[5]]), (3 << 8) | 1, "nfqueue verdict");
        assert_eq!(&v[18..20], &7u16.to_be_bytes(), "queue number, big-endian");
        assert_eq!(u16::from_ne_bytes([v[20], v[21]]), 12, "attribute length");
        assert_eq!(u16::from_ne_bytes([v[22], v[23]]), 2, "NFQA_VERDICT_HDR");
        assert_eq!(&v[24..28], &1u32.to_be_bytes(), "NF_ACCEPT");
        assert_eq!(&v[28..32], &[1, 2, 3, 4], "packet id, big-endian");
    }

    #[test]
    fn packets_and_errors_are_parsed_from_a_batch() {
        // Two packet notifications (with another attribute before the header) and a negative acknowledgement.
        let packet = |id: u32| {
            message(NFQNL_MSG_PACKET, 0, 7, |b| {
                attr(b, 9, &[0xaa; 5]);
                let mut hdr = id.to_be_bytes().to_vec();
                hdr.extend_from_slice(&[0x08, 0x00, 1]);
                attr(b, NFQA_PACKET_HDR, &hdr);
            })
        };
        let mut batch = packet(41);
        batch.extend(packet(42));
        let mut nack = vec![0u8; 16];
        nack[0..4].copy_from_slice(&20u32.to_ne_bytes());
        nack[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        nack.extend_from_slice(&(-libc::EPERM).to_ne_bytes());
        batch.extend(nack);
        assert_eq!(parse(&batch), Received { packets: vec![41, 42], errors: vec![libc::EPERM] });
        assert_eq!(parse(&batch[..10]), Received::default(), "a truncated buffer yields nothing");
    }
}
