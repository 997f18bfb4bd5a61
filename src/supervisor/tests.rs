//! The supervisor's wire format, and how long a vanished replica's runs are waited for.
use super::*;

#[test]
fn reports_read_back_as_written() {
    let reports = [
        Report::Started(7, 4242),
        Report::Failed(8, "No such file or directory (os error 2)".into()),
        Report::Exited(9, ExitStatus::from_raw(3 << 8)),
        Report::Exited(10, ExitStatus::from_raw(9)),
        Report::Silent,
    ];
    for report in reports {
        assert_eq!(Report::parse(&report.line()), Some(report.clone()), "{report:?}");
    }
    assert_eq!(Report::parse("started x 1\n"), None);
    assert_eq!(Report::parse("started 1\n"), None);
    assert_eq!(Report::parse("hello\n"), None);
}

#[test]
fn start_requests_read_back_as_written() {
    let (stdout, stderr) = (std::fs::File::open("/dev/null").unwrap(), std::fs::File::open("/dev/null").unwrap());
    let spawn = Spawn {
        program: OsStr::new("/bin/sh"),
        args: vec![OsStr::new("-c"), OsStr::new("echo 'a=b' \u{e9}")],
        env: vec![("A".into(), "x=y".into()), ("EMPTY".into(), "".into())],
        workdir: Some(std::path::Path::new("/tmp")),
        stdout: stdout.into(),
        stderr: stderr.into(),
        not_after: Some(crate::leadership::BootInstant::now()),
        credentials: Some(Credentials { uid: 65534, gid: 65533, groups: vec![65533, 27, 100] }),
    };
    let bytes = encode_spawn(42, &spawn);
    assert_eq!(bytes[0], b'S');
    let job = read_spawn(&mut &bytes[1..]).unwrap();
    assert_eq!((job.id, job.program.as_os_str()), (42, OsStr::new("/bin/sh")));
    assert_eq!(job.args, [OsString::from("-c"), OsString::from("echo 'a=b' \u{e9}")]);
    assert_eq!(job.env, [("A".into(), "x=y".into()), ("EMPTY".into(), "".into())]);
    assert_eq!(job.workdir, Some(OsString::from("/tmp")));
    assert_eq!(job.not_after, spawn.not_after.unwrap().nanos());
    assert_eq!(job.credentials, spawn.credentials);
    let inherited = Spawn { workdir: None, not_after: None, credentials: None, ..spawn };
    let job = read_spawn(&mut &encode_spawn(1, &inherited)[1..]).unwrap();
    assert_eq!((job.workdir, job.not_after, job.credentials), (None, 0, None));
}

#[test]
fn runs_are_lost_only_after_their_processes_are_gone() {
    let ttl = Supervision::new(Duration::from_secs(10));
    assert_eq!(ttl.silence_limit(), Duration::from_secs(10));
    assert!(ttl.lost_after() > ttl.silence_limit() + HEARTBEAT);
    // A short TTL: the replica's own kill grace is the longer wait.
    let short = Supervision::new(Duration::from_secs(1));
    assert!(short.lost_after() > KILL_GRACE);
    assert!(Supervision::new(Duration::ZERO).silence_limit() >= HEARTBEAT * 2, "heartbeats fit in the limit");
}
