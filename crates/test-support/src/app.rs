//! The merchant's app stand-in: a plain HTTP/1.1 server that records what the sidecar forwards.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::runtime::rt;
use crate::wire::{fill, header_pairs, values};

/// The stand-in app's own acknowledgement: distinguishable from the sidecar's.
pub const APP_ACK: &str = r#"{"result":{"resultCode":"SUCCESS","resultStatus":"S","resultMessage":"success"},"answeredBy":"app"}"#;

/// How the app stand-in answers.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// 200 with [`APP_ACK`] and an `X-App` header.
    Ack,
    /// This status and body.
    Status(u16, &'static str),
    /// Waits this long, then acks (longer than the sidecar's forward_timeout).
    Slow(Duration),
    /// The n-th request gets the n-th status and body; the last one repeats.
    Answers(Vec<(u16, &'static str)>),
}

/// One request the app received.
#[derive(Clone, Debug)]
pub struct Received {
    /// The method.
    pub method: String,
    /// The request target.
    pub target: String,
    /// Names as received on the wire.
    pub headers: Vec<(String, String)>,
    /// The body bytes.
    pub body: Vec<u8>,
}

impl Received {
    /// Every value of a header (any case).
    pub fn all(&self, name: &str) -> Vec<&str> {
        values(&self.headers, name)
    }

    /// The header's value; fails when it appears more than once.
    pub fn one(&self, name: &str) -> Option<&str> {
        let all = self.all(name);
        assert!(
            all.len() <= 1,
            "header {name} appears {} times: {:?}",
            all.len(),
            self.headers
        );
        all.first().copied()
    }
}

/// A plain HTTP/1.1 server (the merchant's app) that records every request and answers per
/// [`Behaviour`]; one thread per connection.
pub struct App {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    behaviour: Arc<Mutex<Behaviour>>,
    /// A bound socket that does not listen yet ([`App::down`]).
    down: Option<tokio::net::TcpSocket>,
}

impl App {
    /// Listening on a port of its own.
    pub fn start(behaviour: Behaviour) -> App {
        let mut app = Self::down(behaviour);
        app.up();
        app
    }

    /// Holds a port but does not listen yet: connections are refused until [`App::up`].
    pub fn down(behaviour: Behaviour) -> App {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        App {
            addr: socket.local_addr().unwrap(),
            received: Arc::default(),
            behaviour: Arc::new(Mutex::new(behaviour)),
            down: Some(socket),
        }
    }

    /// Starts listening (on the port held since [`App::down`]).
    pub fn up(&mut self) {
        let socket = self.down.take().expect("the app is down");
        let listener: TcpListener = {
            let _rt = rt().enter();
            let l = socket.listen(1024).unwrap().into_std().unwrap();
            l.set_nonblocking(false).unwrap();
            l
        };
        let (received, behaviour) = (self.received.clone(), self.behaviour.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (received, behaviour) = (received.clone(), behaviour.clone());
                std::thread::spawn(move || serve_one(stream, &received, &behaviour));
            }
        });
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What it received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Changes how it answers from now on.
    pub fn set(&self, behaviour: Behaviour) {
        *self.behaviour.lock().unwrap() = behaviour;
    }

    /// Waits (generously) until the app has received `n` requests.
    pub fn wait_received(&self, n: usize) -> Vec<Received> {
        let start = Instant::now();
        while self.received().len() < n && start.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.received()
    }
}

fn serve_one(mut s: TcpStream, received: &Mutex<Vec<Received>>, behaviour: &Mutex<Behaviour>) {
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let Some(req) = read_request(&mut s) else {
        return;
    };
    let index = {
        let mut received = received.lock().unwrap();
        received.push(req);
        received.len() - 1
    };
    let behaviour = behaviour.lock().unwrap().clone();
    let (status, body, extra) = match behaviour {
        Behaviour::Ack => (200, APP_ACK, "X-App: stand-in\r\n"),
        Behaviour::Status(status, body) => (status, body, ""),
        Behaviour::Slow(d) => {
            std::thread::sleep(d);
            (200, APP_ACK, "")
        }
        Behaviour::Answers(list) => {
            let (status, body) = list[index.min(list.len() - 1)];
            (status, body, "")
        }
    };
    let head = format!("HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    let _ = s
        .write_all(head.as_bytes())
        .and_then(|_| s.write_all(body.as_bytes()));
}

/// One request with a Content-Length body (what the sidecar sends), read until whole.
fn read_request(s: &mut TcpStream) -> Option<Received> {
    let mut buf = Vec::new();
    loop {
        if let Some(request) = parse_request(&buf) {
            return Some(request);
        }
        if !fill(s, &mut buf).ok()? {
            return None;
        }
    }
}

/// The request in `buf` (httparse), once its head and its Content-Length body are whole;
/// `None` while more is needed (or when it is not a request).
pub fn parse_request(buf: &[u8]) -> Option<Received> {
    let mut slots = [httparse::EMPTY_HEADER; 100];
    let mut req = httparse::Request::new(&mut slots);
    let httparse::Status::Complete(head_len) = req.parse(buf).ok()? else {
        return None;
    };
    let headers = header_pairs(req.headers);
    let len: usize = values(&headers, "content-length")
        .first()
        .map_or(0, |v| v.parse().unwrap());
    let body = buf.get(head_len..head_len + len)?.to_vec();
    Some(Received {
        method: req.method?.to_string(),
        target: req.path?.to_string(),
        headers,
        body,
    })
}
