//! Hostile job files: what a replica's reload must refuse without delaying a slot, holding much
//! memory or writing a huge log line. Shared by the reload test (`job_file_reload`) and the
//! figures of `examples/hostile_job_file.rs`, so both see the same files.

/// A file of `count` small valid jobs (about 70 bytes each).
pub fn many_jobs(count: usize) -> Vec<u8> {
    let mut text = String::with_capacity(count * 72 + 8);
    text.push_str("jobs:\n");
    for i in 0..count {
        text.push_str(&format!("  - {{ name: job-{i:06}, schedule: '*/5 * * * *', shell: 'true' }}\n"));
    }
    text.into_bytes()
}

/// `count` jobs each with two errors (an invalid schedule and an unknown field).
pub fn invalid_jobs(count: usize) -> Vec<u8> {
    let mut text = String::with_capacity(count * 60 + 8);
    text.push_str("jobs:\n");
    for i in 0..count {
        text.push_str(&format!("  - {{ name: bad-{i:06}, schedule: 'never', shel: 'true' }}\n"));
    }
    text.into_bytes()
}

/// The ten files the reload test writes in turn, each named; `limit` is the job file's size
/// limit (`tenure::config::MAX_FILE_BYTES`).
pub fn hostile_files(limit: u64) -> Vec<(&'static str, Vec<u8>)> {
    let limit = limit as usize;
    let mut files = Vec::new();
    // 113,970 jobs, 50 MB: took 3.7 s and 404 MB to refuse before the size limit was lowered.
    files.push(("50 MB of 113,970 jobs", {
        let mut text = many_jobs(113_970);
        let line = b"# padding, to make the file 50 MB as the one first seen\n";
        while text.len() < 50_000_000 {
            text.extend_from_slice(line);
        }
        text
    }));
    files.push(("one byte over the size limit", {
        let mut text = b"jobs: []\n".to_vec();
        text.resize(limit + 1, b'\n');
        text
    }));
    files.push(("100,001 jobs", many_jobs(100_001)));
    files.push(("100,000 invalid jobs", invalid_jobs(100_000)));
    files.push(("flow nesting 100,000 deep", {
        let mut text = b"jobs:\n  - name: x\n    env: ".to_vec();
        text.extend(std::iter::repeat_n(b'[', 100_000));
        text.extend(std::iter::repeat_n(b']', 100_000));
        text.push(b'\n');
        text
    }));
    files.push(("block nesting 5,000 deep", {
        let text: String = (0..5_000).map(|i| format!("{}k{i}:\n", " ".repeat(i))).collect();
        text.into_bytes()
    }));
    files.push(("an alias bomb (10^12 nodes)", {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let previous = format!("*a{}", i - 1);
            text.push_str(&format!("a{i}: &a{i} [{}]\n", vec![previous; 10].join(", ")));
        }
        text.push_str("jobs: []\n");
        text.into_bytes()
    }));
    files.push(("a flood of tiny nodes under the size limit", {
        let mut text = b"jobs: [".to_vec();
        while text.len() < limit - 16 {
            text.extend_from_slice(b"0,");
        }
        text.extend_from_slice(b"0]\n");
        text
    }));
    files.push(("200 unknown fields with 64 KB names", {
        let mut text = String::from("jobs:\n");
        for i in 0..200 {
            let key = format!("k{i}{}", "x".repeat(64 * 1024));
            text.push_str(&format!(
                "  - name: long-{i}\n    schedule: '@daily'\n    shell: 'true'\n    ? {key}\n    : 1\n"
            ));
        }
        text.into_bytes()
    }));
    files.push(("binary garbage", (0..1_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()));
    files
}
