use super::*;
use std::net::TcpListener;

const MIB: u64 = 1 << 20;

#[test]
fn urls() {
    assert_eq!(
        split_url("http://10.0.2.2:8080/pxe/root.img"),
        Some(("10.0.2.2:8080".into(), "/pxe/root.img".into()))
    );
    assert_eq!(split_url("http://h"), Some(("h:80".into(), "/".into())));
    assert_eq!(split_url("https://h/x"), None);
    assert_eq!(split_url("http:///x"), None);
    assert_eq!(split_url("http://h/x\r\nEvil: 1"), None);
}

#[test]
fn heads() {
    let h = |s: &[&str]| parse_head(&s.iter().map(|x| x.to_string()).collect::<Vec<_>>());
    assert_eq!(
        h(&["HTTP/1.1 200 OK", "Content-Length: 12"]),
        Ok(Head {
            status: 200,
            len: Some(12),
            chunked: false
        })
    );
    assert_eq!(
        h(&["HTTP/1.0 404 Not Found", "transfer-encoding: Chunked"]),
        Ok(Head {
            status: 404,
            len: None,
            chunked: true
        })
    );
    assert!(h(&["SSH-2.0"]).unwrap_err().contains("status line"));
    assert!(h(&["HTTP/1.1 200 OK", "Content-Length: x"]).is_err());
    let e = h(&["HTTP/1.1 200 OK", "Content-Length: 18446744073709551616"]).unwrap_err();
    assert!(e.contains("below 2^64"), "{e}");
    assert!(h(&["HTTP/1.1 200 OK", "Content-Length: 1", "Content-Length: 2"]).is_err());
}

#[test]
fn chunk_sizes() {
    assert_eq!(parse_chunk_size("1a;name=v"), Ok(26));
    assert_eq!(parse_chunk_size("ffffffffffffffff"), Ok(u64::MAX));
    assert!(parse_chunk_size("1ffffffffffffffff").is_err());
    assert!(parse_chunk_size("").is_err());
    assert!(parse_chunk_size("-1").is_err());
}

/// Reads a whole response from bytes, with a body cap.
fn parse(raw: &[u8], cap: u64) -> io::Result<Vec<u8>> {
    let (_, mut body) = read_response(io::Cursor::new(raw.to_vec()), cap)?;
    let mut v = Vec::new();
    body.read_to_end(&mut v)?;
    Ok(v)
}

#[test]
fn bodies() {
    assert_eq!(
        parse(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloEXTRA",
            MIB
        )
        .unwrap(),
        b"hello"
    );
    assert_eq!(
        parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n", MIB)
            .unwrap(),
        b"hello world"
    );
    assert_eq!(
        parse(b"HTTP/1.0 200 OK\r\n\r\nuntil close", MIB).unwrap(),
        b"until close"
    );
    let e = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nshort", MIB).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    let e = parse(b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n", MIB).unwrap_err();
    assert!(e.to_string().contains("500"), "{e}");
}

#[test]
fn hostile_responses_are_clear_errors() {
    let endless_header = [b"HTTP/1.1 200 OK\r\nX: ".as_slice(), &[b'a'; 20_000]].concat();
    let endless_size = [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".as_slice(),
        &[b'0'; 20_000],
    ]
    .concat();
    let many_headers = [
        b"HTTP/1.1 200 OK\r\n".as_slice(),
        b"X: y\r\n".repeat(HEAD_LINES + 1).as_slice(),
    ]
    .concat();
    let cases: [(&str, Vec<u8>, &str); 7] = [
        (
            "endless header line",
            endless_header,
            "longer than 8192 bytes",
        ),
        (
            "endless chunk-size line",
            endless_size,
            "chunk-size line longer",
        ),
        ("too many headers", many_headers, "longer than 100 lines"),
        (
            "Content-Length of 2^64",
            b"HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551616\r\n\r\n".to_vec(),
            "below 2^64",
        ),
        (
            "Content-Length past the cap",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n".to_vec(),
            "passes the cap of 1000 bytes",
        ),
        (
            "chunk size ffffffffffffffff",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nabc"
                .to_vec(),
            "passes the cap of 1000 bytes",
        ),
        (
            "close-delimited body past the cap",
            [b"HTTP/1.1 200 OK\r\n\r\n".as_slice(), &[7u8; 1500]].concat(),
            "passes the cap of 1000 bytes",
        ),
    ];
    for (what, raw, want) in cases {
        let e = parse(&raw, 1000).expect_err(what);
        assert!(e.to_string().contains(want), "{what}: {e}");
    }
    // Chunks that add up past the cap, each below it.
    let e = parse(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n258\r\n"
            .iter()
            .chain(&[1u8; 600])
            .chain(b"\r\n258\r\n")
            .chain(&[1u8; 600])
            .copied()
            .collect::<Vec<u8>>()
            .as_slice(),
        1000,
    )
    .unwrap_err();
    assert!(e.to_string().contains("cap of 1000"), "{e}");
}

/// Serves one response, `raw` then `drip` one byte per `every`; returns the URL.
fn serve(raw: Vec<u8>, drip: usize, every: Duration) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/f", l.local_addr().unwrap());
    std::thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        // Read the whole request first: closing with unread bytes would reset the
        // connection under the client.
        let mut req = Vec::new();
        let mut b = [0u8; 1024];
        while !req.ends_with(b"\r\n\r\n") {
            match c.read(&mut b) {
                Ok(0) | Err(_) => break,
                Ok(n) => req.extend_from_slice(&b[..n]),
            }
        }
        let _ = c.write_all(&raw);
        for _ in 0..drip {
            std::thread::sleep(every);
            if c.write_all(b"x").is_err() {
                return;
            }
        }
    });
    url
}

fn limits(stall_ms: u64, deadline_ms: u64) -> Limits {
    Limits {
        stall: Duration::from_millis(stall_ms),
        deadline: Duration::from_millis(deadline_ms),
        body: MIB,
    }
}

#[test]
fn over_tcp() {
    let url = serve(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
        0,
        Duration::ZERO,
    );
    let (mut body, len) = get(&url, &limits(5000, 10_000)).unwrap();
    let mut v = Vec::new();
    body.read_to_end(&mut v).unwrap();
    assert_eq!((v.as_slice(), len), (b"hello".as_slice(), Some(5)));
}

#[test]
fn a_slow_drip_ends_at_the_deadline() {
    // A byte every 100 ms never stalls for 1 s, but the request ends at 1.5 s.
    let url = serve(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n".to_vec(),
        1000,
        Duration::from_millis(100),
    );
    let start = Instant::now();
    let (mut body, _) = get(&url, &limits(1000, 1500)).unwrap();
    let e = io::copy(&mut body, &mut io::sink()).unwrap_err();
    assert!(e.to_string().contains("deadline of 1.5s passed"), "{e}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    // The same drip inside the head.
    let url = serve(
        b"HTTP/1.1 200 OK\r\nX: ".to_vec(),
        1000,
        Duration::from_millis(100),
    );
    let e = get(&url, &limits(1000, 1500)).err().unwrap();
    assert!(e.to_string().contains("deadline"), "{e}");
}

#[test]
fn a_stalled_server_fails_after_the_stall_time() {
    let url = serve(
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc".to_vec(),
        1,
        Duration::from_secs(5),
    );
    let start = Instant::now();
    let (mut body, _) = get(&url, &limits(300, 10_000)).unwrap();
    let e = io::copy(&mut body, &mut io::sink()).unwrap_err();
    assert!(e.to_string().contains("no data for"), "{e}");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
}
