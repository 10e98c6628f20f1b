//! The host communicators: ranks exchange messages with rank 0 (the hub),
//! which sums in rank order and sends the result back. Two transports carry
//! the messages: channels between threads of one process ([`threads`]) and
//! TCP connections between processes and machines ([`tcp`], std::net only).
//!
//! Every receive has a timeout; a peer that exits or fails closes its end,
//! which the others see at once as an error naming that rank.

use super::{check_root, error, flat_f32, Communicator};
use engine::{Device, Result, Tensor};
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

/// The collective a message belongs to (checked so that ranks out of step
/// fail with a clear error instead of mixing data).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    AllReduce = 1,
    Broadcast = 2,
    AllGather = 3,
    Barrier = 4,
}

impl Op {
    fn from_u8(b: u8) -> Option<Op> {
        [Op::AllReduce, Op::Broadcast, Op::AllGather, Op::Barrier]
            .into_iter()
            .find(|o| *o as u8 == b)
    }
}

pub struct Msg {
    op: Op,
    data: Vec<f32>,
}

/// One end of a connection between rank 0 and another rank.
pub trait Link: Send {
    fn send(&mut self, msg: &Msg) -> Result<()>;
    fn recv(&mut self) -> Result<Msg>;
}

/// A communicator over links: rank 0 holds one link per other rank (in rank
/// order), every other rank one link to rank 0.
pub struct Hub<L: Link> {
    rank: usize,
    world: usize,
    /// Rank 0: links to ranks 1..world; others: the link to rank 0.
    links: Vec<L>,
}

impl<L: Link> Hub<L> {
    /// The message of `peer` for `op`, checked to have `len` values (any
    /// length when `None`).
    fn expect(&mut self, link: usize, op: Op, len: Option<usize>) -> Result<Vec<f32>> {
        let peer = if self.rank == 0 { link + 1 } else { 0 };
        let m = self.links[link].recv()?;
        if m.op != op || len.is_some_and(|n| n != m.data.len()) {
            return Err(error(format!(
                "rank {peer} sent {:?} of {} values while rank {} expected {op:?}{}: the ranks are out of step",
                m.op,
                m.data.len(),
                self.rank,
                len.map_or(String::new(), |n| format!(" of {n}"))
            )));
        }
        Ok(m.data)
    }

    fn send_all(&mut self, op: Op, data: Vec<f32>) -> Result<Vec<f32>> {
        let msg = Msg { op, data };
        for l in &mut self.links {
            l.send(&msg)?;
        }
        Ok(msg.data)
    }

    /// Sum in rank order: rank 0's values, plus rank 1's, plus rank 2's...
    fn reduce(&mut self, op: Op, mut v: Vec<f32>) -> Result<Vec<f32>> {
        if self.rank == 0 {
            for k in 0..self.links.len() {
                let other = self.expect(k, op, Some(v.len()))?;
                for (a, b) in v.iter_mut().zip(&other) {
                    *a += *b;
                }
            }
            self.send_all(op, v)
        } else {
            let n = v.len();
            self.links[0].send(&Msg { op, data: v })?;
            self.expect(0, op, Some(n))
        }
    }

    fn bcast(&mut self, v: Vec<f32>, root: usize) -> Result<Vec<f32>> {
        check_root(root, self.world)?;
        let n = v.len();
        if self.rank == 0 {
            let v = if root == 0 {
                v
            } else {
                self.expect(root - 1, Op::Broadcast, Some(n))?
            };
            self.send_all(Op::Broadcast, v)
        } else {
            if self.rank == root {
                self.links[0].send(&Msg {
                    op: Op::Broadcast,
                    data: v,
                })?;
            }
            self.expect(0, Op::Broadcast, Some(n))
        }
    }

    fn gather(&mut self, v: Vec<f32>) -> Result<Vec<f32>> {
        let n = v.len();
        if self.rank == 0 {
            let mut all = v;
            for k in 0..self.links.len() {
                all.extend(self.expect(k, Op::AllGather, Some(n))?);
            }
            self.send_all(Op::AllGather, all)
        } else {
            self.links[0].send(&Msg {
                op: Op::AllGather,
                data: v,
            })?;
            self.expect(0, Op::AllGather, Some(n * self.world))
        }
    }
}

/// The host values of a flat f32 tensor.
fn host(t: &Tensor) -> Result<Vec<f32>> {
    flat_f32(t)?;
    t.to_device(Device::Cpu)?.to_vec::<f32>()
}

/// `v` as a flat tensor on `device`.
fn back(v: Vec<f32>, device: Device) -> Result<Tensor> {
    let n = v.len();
    Tensor::from_vec(v, &[n])?.to_device(device)
}

impl<L: Link> Communicator for Hub<L> {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.world
    }
    fn all_reduce_sum(&mut self, t: &Tensor) -> Result<Tensor> {
        let v = self.reduce(Op::AllReduce, host(t)?)?;
        back(v, t.device())
    }
    fn broadcast(&mut self, t: &Tensor, root: usize) -> Result<Tensor> {
        let v = self.bcast(host(t)?, root)?;
        back(v, t.device())
    }
    fn all_gather(&mut self, t: &Tensor) -> Result<Tensor> {
        let v = self.gather(host(t)?)?;
        back(v, t.device())
    }
    fn barrier(&mut self) -> Result<()> {
        self.reduce(Op::Barrier, Vec::new()).map(|_| ())
    }
}

/// How long a rank waits for a peer (to connect, or to send its part of a
/// collective) before giving up: `SLMLP_DIST_TIMEOUT` seconds, default 1800
/// (rank 0's validation pass runs while the others wait).
pub fn default_timeout() -> Result<Duration> {
    match std::env::var("SLMLP_DIST_TIMEOUT") {
        Err(_) => Ok(Duration::from_secs(1800)),
        Ok(s) => match s.parse::<f64>() {
            Ok(x) if x > 0.0 && x <= 86400.0 => Ok(Duration::from_secs_f64(x)),
            _ => Err(error(format!(
                "SLMLP_DIST_TIMEOUT={s:?}: expected seconds in (0, 86400]"
            ))),
        },
    }
}

// ---------------------------------------------------------------- threads

pub struct ChannelLink {
    peer: usize,
    tx: Sender<Msg>,
    rx: Receiver<Msg>,
    timeout: Duration,
}

impl Link for ChannelLink {
    fn send(&mut self, msg: &Msg) -> Result<()> {
        let copy = Msg {
            op: msg.op,
            data: msg.data.clone(),
        };
        self.tx
            .send(copy)
            .map_err(|_| error(format!("rank {} has stopped (its thread ended)", self.peer)))
    }
    fn recv(&mut self) -> Result<Msg> {
        self.rx.recv_timeout(self.timeout).map_err(|e| match e {
            RecvTimeoutError::Disconnected => {
                error(format!("rank {} has stopped (its thread ended)", self.peer))
            }
            RecvTimeoutError::Timeout => error(format!(
                "rank {} sent nothing for {:.0} s: it is stuck or dead",
                self.peer,
                self.timeout.as_secs_f64()
            )),
        })
    }
}

/// `world` communicators for `world` threads of this process (rank `r` is
/// element `r`); each thread takes its own.
pub fn threads(world: usize, timeout: Duration) -> Result<Vec<Hub<ChannelLink>>> {
    if world == 0 {
        return Err(error("a group needs at least one rank"));
    }
    let mut hub = Hub {
        rank: 0,
        world,
        links: Vec::new(),
    };
    let mut others = Vec::new();
    for r in 1..world {
        let (to_r, from_0) = channel();
        let (to_0, from_r) = channel();
        hub.links.push(ChannelLink {
            peer: r,
            tx: to_r,
            rx: from_r,
            timeout,
        });
        others.push(Hub {
            rank: r,
            world,
            links: vec![ChannelLink {
                peer: 0,
                tx: to_0,
                rx: from_0,
                timeout,
            }],
        });
    }
    Ok(std::iter::once(hub).chain(others).collect())
}

// -------------------------------------------------------------------- tcp

const MAGIC: [u8; 4] = *b"SLDP";
/// The most values one message may announce (1 GiB; a 25 MB bucket is 6.5M
/// values, the largest parameter of ResNet-50 2.4M), so that a corrupt
/// header cannot make a rank allocate without bound.
const MAX_VALUES: u64 = 1 << 28;

pub struct TcpLink {
    peer: usize,
    stream: TcpStream,
    timeout: Duration,
}

impl TcpLink {
    fn fail(&self, what: &str, e: std::io::Error) -> engine::Error {
        match e.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => error(format!(
                "rank {} sent nothing for {:.0} s while {what}: it is stuck or dead",
                self.peer,
                self.timeout.as_secs_f64()
            )),
            ErrorKind::UnexpectedEof
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe => error(format!(
                "rank {} closed its connection while {what}: it exited or failed (see its own output)",
                self.peer
            )),
            _ => error(format!("connection to rank {} while {what}: {e}", self.peer)),
        }
    }
}

impl Link for TcpLink {
    fn send(&mut self, msg: &Msg) -> Result<()> {
        let mut bytes = Vec::with_capacity(13 + 4 * msg.data.len());
        bytes.extend_from_slice(&MAGIC);
        bytes.push(msg.op as u8);
        bytes.extend_from_slice(&(msg.data.len() as u64).to_le_bytes());
        for x in &msg.data {
            bytes.extend_from_slice(&x.to_le_bytes());
        }
        self.stream
            .write_all(&bytes)
            .map_err(|e| self.fail("sending", e))
    }
    fn recv(&mut self) -> Result<Msg> {
        let mut head = [0u8; 13];
        self.stream
            .read_exact(&mut head)
            .map_err(|e| self.fail("receiving", e))?;
        let op = Op::from_u8(head[4]);
        let n = u64::from_le_bytes(head[5..13].try_into().unwrap_or_default());
        let (Some(op), true, true) = (op, head[..4] == MAGIC, n <= MAX_VALUES) else {
            return Err(error(format!(
                "rank {} sent a malformed message (not an slmlp peer, or a different version)",
                self.peer
            )));
        };
        let mut raw = vec![0u8; n as usize * 4];
        self.stream
            .read_exact(&mut raw)
            .map_err(|e| self.fail("receiving", e))?;
        let data = raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(Msg { op, data })
    }
}

fn setup(stream: &TcpStream, timeout: Duration) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))
}

/// The hello a rank sends after connecting: magic, rank, world.
fn hello(rank: usize, world: usize) -> Vec<u8> {
    let mut b = MAGIC.to_vec();
    b.extend_from_slice(&(rank as u32).to_le_bytes());
    b.extend_from_slice(&(world as u32).to_le_bytes());
    b
}

/// Joins the group of `world` processes that meet at `addr:port`: rank 0
/// listens there, the others connect (retrying until `timeout`, so the
/// order processes start in does not matter).
pub fn tcp(
    rank: usize,
    world: usize,
    addr: &str,
    port: u16,
    timeout: Duration,
) -> Result<Hub<TcpLink>> {
    if world == 0 || rank >= world {
        return Err(error(format!("rank {rank} of a group of {world}")));
    }
    let at = format!("{addr}:{port}");
    let target = (addr, port)
        .to_socket_addrs()
        .map_err(|e| error(format!("MASTER_ADDR:MASTER_PORT {at}: {e}")))?
        .next()
        .ok_or_else(|| error(format!("MASTER_ADDR {addr:?} resolves to no address")))?;
    let deadline = Instant::now() + timeout;
    let mut links = Vec::new();
    if rank == 0 {
        let listener = TcpListener::bind(target)
            .map_err(|e| error(format!("rank 0 cannot listen on {at}: {e}")))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| error(format!("{at}: {e}")))?;
        let mut slots: Vec<Option<TcpStream>> = (1..world).map(|_| None).collect();
        while slots.iter().any(Option::is_none) {
            match listener.accept() {
                Ok((stream, from)) => {
                    let mut head = [0u8; 12];
                    let got = setup(&stream, timeout).and_then(|_| (&stream).read_exact(&mut head));
                    let r = u32::from_le_bytes(head[4..8].try_into().unwrap_or_default()) as usize;
                    let w = u32::from_le_bytes(head[8..12].try_into().unwrap_or_default()) as usize;
                    if got.is_err() || head[..4] != MAGIC {
                        eprintln!(
                            "warning: ignoring a connection from {from} that is not an slmlp rank"
                        );
                        continue;
                    }
                    if w != world {
                        return Err(error(format!(
                            "rank {r} (from {from}) has WORLD_SIZE={w}, rank 0 has {world}"
                        )));
                    }
                    match slots.get_mut(r.wrapping_sub(1)) {
                        Some(s @ None) => *s = Some(stream),
                        _ => return Err(error(format!("a second rank {r} connected from {from} (or rank {r} is not in 1..{world})"))),
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        let missing: Vec<String> = (1..world)
                            .filter(|r| slots[r - 1].is_none())
                            .map(|r| r.to_string())
                            .collect();
                        return Err(error(format!(
                            "rank(s) {} did not connect to {at} within {:.0} s",
                            missing.join(", "),
                            timeout.as_secs_f64()
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(error(format!("accepting on {at}: {e}"))),
            }
        }
        for (k, s) in slots.into_iter().enumerate() {
            let stream = s.ok_or_else(|| error("rendezvous lost a connection"))?;
            links.push(TcpLink {
                peer: k + 1,
                stream,
                timeout,
            });
        }
    } else {
        let stream = loop {
            match TcpStream::connect_timeout(&target, Duration::from_secs(5)) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => {
                    return Err(error(format!(
                        "rank {rank} could not reach rank 0 at {at} within {:.0} s: {e}",
                        timeout.as_secs_f64()
                    )))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        let mut link = TcpLink {
            peer: 0,
            stream,
            timeout,
        };
        setup(&link.stream, timeout)
            .and_then(|_| link.stream.write_all(&hello(rank, world)))
            .map_err(|e| link.fail("connecting", e))?;
        links.push(link);
    }
    let mut hub = Hub { rank, world, links };
    // everyone is connected once this returns
    hub.barrier()?;
    Ok(hub)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(v: &[f32]) -> Tensor {
        Tensor::from_vec(v.to_vec(), &[v.len()]).unwrap()
    }

    /// Runs `f(rank, comm)` on one thread per communicator.
    fn run<C: Communicator + 'static, T: Send + 'static>(
        comms: Vec<C>,
        f: impl Fn(usize, &mut C) -> T + Send + Sync + Copy + 'static,
    ) -> Vec<T> {
        let handles: Vec<_> = comms
            .into_iter()
            .enumerate()
            .map(|(r, mut c)| std::thread::spawn(move || f(r, &mut c)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    fn collectives<C: Communicator>(r: usize, c: &mut C) -> Vec<Vec<f32>> {
        let x = flat(&[r as f32 + 0.5, 1e8, -(r as f32)]);
        let sum = c.all_reduce_sum(&x).unwrap().to_vec::<f32>().unwrap();
        let b = c.broadcast(&x, 2).unwrap().to_vec::<f32>().unwrap();
        let g = c
            .all_gather(&flat(&[r as f32]))
            .unwrap()
            .to_vec::<f32>()
            .unwrap();
        c.barrier().unwrap();
        vec![sum, b, g]
    }

    fn expected() -> Vec<Vec<f32>> {
        // rank order: ((x0 + x1) + x2)
        let s = |i: usize| {
            let xs: Vec<[f32; 3]> = (0..3).map(|r| [r as f32 + 0.5, 1e8, -(r as f32)]).collect();
            (xs[0][i] + xs[1][i]) + xs[2][i]
        };
        vec![
            vec![s(0), s(1), s(2)],
            vec![2.5, 1e8, -2.0],
            vec![0.0, 1.0, 2.0],
        ]
    }

    #[test]
    fn threads_collectives_match_rank_order_sums() {
        let out = run(threads(3, Duration::from_secs(10)).unwrap(), collectives);
        for got in out {
            assert_eq!(got, expected());
        }
    }

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[test]
    fn tcp_collectives_match_threads() {
        let port = free_port();
        let handles: Vec<_> = (0..3)
            .map(|r| {
                std::thread::spawn(move || {
                    let mut c = tcp(r, 3, "127.0.0.1", port, Duration::from_secs(20)).unwrap();
                    collectives(r, &mut c)
                })
            })
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap(), expected());
        }
    }

    #[test]
    fn a_dead_rank_is_a_clear_error_not_a_hang() {
        let port = free_port();
        let t0 = Instant::now();
        let dead = std::thread::spawn(move || {
            // connects, then exits before the first collective
            drop(tcp(1, 2, "127.0.0.1", port, Duration::from_secs(20)).unwrap());
        });
        let mut c = tcp(0, 2, "127.0.0.1", port, Duration::from_secs(20)).unwrap();
        dead.join().unwrap();
        let e = c.all_reduce_sum(&flat(&[1.0])).unwrap_err().to_string();
        assert!(e.contains("rank 1 closed its connection"), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(10));

        // a rank that never comes: rank 0 gives up after the timeout
        let port = free_port();
        let t0 = Instant::now();
        let e = tcp(0, 2, "127.0.0.1", port, Duration::from_millis(300))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("rank(s) 1 did not connect"), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(5));

        // a thread rank that ends: the others' next collective fails
        let mut comms = threads(2, Duration::from_secs(10)).unwrap();
        drop(comms.pop());
        let e = comms[0].barrier().unwrap_err().to_string();
        assert!(e.contains("rank 1 has stopped"), "{e}");
    }

    #[test]
    fn ranks_out_of_step_are_an_error() {
        let out = run(threads(2, Duration::from_secs(10)).unwrap(), |r, c| {
            if r == 0 {
                c.all_reduce_sum(&flat(&[1.0, 2.0])).map(|_| ())
            } else {
                c.all_gather(&flat(&[1.0, 2.0])).map(|_| ())
            }
        });
        let e = out[0].as_ref().unwrap_err().to_string();
        assert!(e.contains("out of step"), "{e}");
    }
}
