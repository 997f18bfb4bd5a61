//! A TCP fault proxy on loopback: one in front of etcd and one in front of PostgreSQL for each
//! replica, so a test can cut one replica off from one server while the others carry on; or one
//! service address in front of a database that fails over, moved to the promoted standby.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What the proxy does to traffic, from the moment it is set (open connections included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything.
    Pass,
    /// Keep connections open but drop every byte, both ways.
    Blackhole,
    /// Drop what the client sends; forward the server's answers.
    BlackholeToServer,
    /// Forward what the client sends; drop the server's answers.
    BlackholeToClient,
    /// Reset every open connection (RST) and every new one.
    Reset,
    /// Refuse new connections (nothing listens); open ones carry on.
    Refuse,
    /// Hold every chunk `ms` milliseconds, plus up to `jitter` more.
    Delay { ms: u64, jitter: u64 },
}

pub struct Proxy {
    port: u16,
    fault: watch::Sender<Fault>,
    route: Arc<Mutex<Route>>,
    stop: CancellationToken,
}

/// Where new connections go; `opened` ends the connections opened to it (with the proxy, or
/// when it moves) and `moved` says it moved: they are reset rather than closed.
struct Route {
    target: SocketAddr,
    opened: CancellationToken,
    moved: CancellationToken,
}

impl Route {
    fn new(target: SocketAddr, stop: &CancellationToken) -> Route {
        Route { target, opened: stop.child_token(), moved: CancellationToken::new() }
    }
}

impl Proxy {
    /// Listen on a free loopback port and forward to `target`.
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().unwrap().port();
        let (fault, _) = watch::channel(Fault::Pass);
        let stop = CancellationToken::new();
        let route = Arc::new(Mutex::new(Route::new(target, &stop)));
        tokio::spawn(accept_loop(listener, port, route.clone(), fault.subscribe(), stop.clone()));
        Proxy { port, fault, route, stop }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }

    /// Send new connections to `target` from now on and reset (RST) every open one, as a
    /// service address moving to another machine does: the new machine knows none of them.
    pub fn retarget(&self, target: SocketAddr) {
        let mut route = self.route.lock().unwrap();
        route.moved.cancel();
        route.opened.cancel();
        *route = Route::new(target, &self.stop);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn accept_loop(
    listener: TcpListener,
    port: u16,
    route: Arc<Mutex<Route>>,
    mut fault: watch::Receiver<Fault>,
    stop: CancellationToken,
) {
    let mut listener = Some(listener);
    loop {
        let current = *fault.borrow_and_update();
        match (&listener, current) {
            (Some(_), Fault::Refuse) => listener = None,
            (None, fault) if fault != Fault::Refuse => {
                // Back on the same port; the kernel may hold it a moment.
                for _ in 0..100 {
                    if let Ok(bound) = TcpListener::bind(("127.0.0.1", port)).await {
                        listener = Some(bound);
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            _ => {}
        }
        let accepted = async {
            match &listener {
                Some(listener) => listener.accept().await.ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = stop.cancelled() => return,
            changed = fault.changed() => if changed.is_err() { return },
            Some((client, _)) = accepted => {
                let (target, opened, moved) = {
                    let route = route.lock().unwrap();
                    (route.target, route.opened.clone(), route.moved.clone())
                };
                tokio::spawn(connection(client, target, fault.clone(), opened, moved));
            }
        }
    }
}

/// Forward one connection until either side closes or `opened` is cancelled: the proxy stops,
/// or it moved (`moved`), which resets both sides.
async fn connection(
    client: TcpStream,
    target: SocketAddr,
    fault: watch::Receiver<Fault>,
    opened: CancellationToken,
    moved: CancellationToken,
) {
    if *fault.borrow() == Fault::Reset {
        reset(client);
        return;
    }
    let Ok(server) = TcpStream::connect(target).await else {
        reset(client);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let done = opened.child_token();
    let to_server =
        tokio::spawn(pump(client_read, server_write, Direction::ToServer, fault.clone(), done.clone(), moved.clone()));
    let to_client = tokio::spawn(pump(server_read, client_write, Direction::ToClient, fault, done.clone(), moved));
    let (a, b) = (to_server.await, to_client.await);
    // If either side was reset, reset both: reunite the halves and close with SO_LINGER 0.
    if let (Ok(Ended::Reset(read_a, write_a)), Ok(Ended::Reset(read_b, write_b))) = (a, b) {
        if let (Ok(one), Ok(other)) = (read_a.reunite(write_b), read_b.reunite(write_a)) {
            reset(one);
            reset(other);
        }
    }
}

fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    ToServer,
    ToClient,
}

enum Ended {
    Closed,
    Reset(OwnedReadHalf, OwnedWriteHalf),
}

async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    direction: Direction,
    mut fault: watch::Receiver<Fault>,
    done: CancellationToken,
    moved: CancellationToken,
) -> Ended {
    let mut buffer = vec![0u8; 64 * 1024];
    let mut seed = u64::from(std::process::id()) ^ (buffer.as_ptr() as u64);
    loop {
        if *fault.borrow_and_update() == Fault::Reset {
            done.cancel();
            return Ended::Reset(from, to);
        }
        let read = tokio::select! {
            () = done.cancelled() => {
                let current = *fault.borrow();
                let reset = current == Fault::Reset || moved.is_cancelled();
                return if reset { Ended::Reset(from, to) } else { Ended::Closed };
            }
            changed = fault.changed() => {
                if changed.is_err() { return Ended::Closed }
                continue;
            }
            read = from.read(&mut buffer) => read,
        };
        let n = match read {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                done.cancel();
                return Ended::Closed;
            }
            Ok(n) => n,
        };
        let current = *fault.borrow();
        let dropped = match current {
            Fault::Blackhole => true,
            Fault::BlackholeToServer => direction == Direction::ToServer,
            Fault::BlackholeToClient => direction == Direction::ToClient,
            _ => false,
        };
        if dropped {
            continue;
        }
        if let Fault::Delay { ms, jitter } = current {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let extra = if jitter == 0 { 0 } else { (seed >> 33) % (jitter + 1) };
            tokio::time::sleep(Duration::from_millis(ms + extra)).await;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            done.cancel();
            return Ended::Closed;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on loopback that prefixes every answer with `tag`; returns its address.
    async fn echo(tag: u8) -> SocketAddr {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = echo.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let mut buffer = [0u8; 1024];
                    while let Ok(n) = socket.read(&mut buffer).await {
                        buffer[0] = if tag == 0 { buffer[0] } else { tag };
                        if n == 0 || socket.write_all(&buffer[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        target
    }

    async fn round_trip(mut stream: TcpStream) -> Option<([u8; 4], TcpStream)> {
        stream.write_all(b"ping").await.ok()?;
        let mut answer = [0u8; 4];
        tokio::time::timeout(Duration::from_millis(300), stream.read_exact(&mut answer)).await.ok()?.ok()?;
        Some((answer, stream))
    }

    /// An echo server behind the proxy, and each fault as a client sees it.
    #[tokio::test]
    async fn each_fault_does_what_it_says() {
        let target = echo(0).await;
        let proxy = Proxy::start(target).await;
        let address = format!("127.0.0.1:{}", proxy.port());

        let stream = TcpStream::connect(&address).await.unwrap();
        let (answer, stream) = round_trip(stream).await.expect("pass forwards");
        assert_eq!(&answer, b"ping");

        proxy.set(Fault::Blackhole);
        assert!(round_trip(stream).await.is_none(), "blackhole drops");
        let stream = TcpStream::connect(&address).await.expect("blackhole still accepts");
        assert!(round_trip(stream).await.is_none());

        for one_way in [Fault::BlackholeToServer, Fault::BlackholeToClient] {
            proxy.set(one_way);
            let stream = TcpStream::connect(&address).await.unwrap();
            assert!(round_trip(stream).await.is_none(), "{one_way:?} drops one direction");
        }

        proxy.set(Fault::Delay { ms: 150, jitter: 0 });
        let stream = TcpStream::connect(&address).await.unwrap();
        let started = std::time::Instant::now();
        let mut stream = stream;
        stream.write_all(b"ping").await.unwrap();
        let mut answer = [0u8; 4];
        stream.read_exact(&mut answer).await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(290), "both directions delayed");

        proxy.set(Fault::Reset);
        let mut buffer = [0u8; 4];
        let read = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buffer)).await.unwrap();
        assert!(matches!(read, Err(_) | Ok(0)), "open connections are reset: {read:?}");

        proxy.set(Fault::Refuse);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(TcpStream::connect(&address).await.is_err(), "refuse: nothing listens");

        proxy.set(Fault::Pass);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let stream = TcpStream::connect(&address).await.expect("listens again on the same port");
        assert_eq!(&round_trip(stream).await.expect("pass again").0, b"ping");
    }

    /// Moving the service address: new connections reach the new server, open ones to the old
    /// one are reset (they cannot carry on against a server that never knew them).
    #[tokio::test]
    async fn retarget_sends_new_connections_to_the_new_server_and_resets_open_ones() {
        let (old, new) = (echo(b'o').await, echo(b'n').await);
        let proxy = Proxy::start(old).await;
        let address = format!("127.0.0.1:{}", proxy.port());
        let (answer, mut open) = round_trip(TcpStream::connect(&address).await.unwrap()).await.expect("forwards");
        assert_eq!(&answer, b"oing");

        proxy.retarget(new);
        let mut buffer = [0u8; 4];
        let read = tokio::time::timeout(Duration::from_secs(1), open.read(&mut buffer)).await.unwrap();
        assert!(
            matches!(&read, Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset),
            "the open connection is reset: {read:?}"
        );
        let (answer, _) = round_trip(TcpStream::connect(&address).await.unwrap()).await.expect("forwards again");
        assert_eq!(&answer, b"ning", "a new connection reaches the new server");
    }
}
