//! What other processes of tenure's own user, its jobs among them, can read of a replica or its
//! supervisor through /proc. The kernel lets a process of the same user read another's
//! `environ`, `fd/`, `maps` and `mem` (and attach to it with ptrace) only while that one is
//! *dumpable*; [`forbid_inspection`] makes this process not dumpable, first thing in `main` (and
//! again in the supervisor). A job is started by exec, which makes it dumpable again: its own
//! /proc stays its own.
//!
//! One thing stays readable whatever the process does: `/proc/PID/cmdline`, the kernel's copy of
//! the command line on the process's own stack (Linux shows it to every process, dumpable or
//! not). [`scrub_secrets`] overwrites the values of the secret flags there (`--admin-token X`
//! shows as `--admin-token xxxx`), and removes the secret variables from the environment and
//! overwrites them in the environment block the kernel shows as `environ`, once the command line
//! has been read and before anything is started. Which flags and variables are secret is the
//! command line's to say (`cli::secret_arguments`: those whose values clap hides).
//!
//! What this cannot help: root (and any process with `CAP_SYS_PTRACE`) reads everything, and a
//! job running as tenure's own user can still signal it. Jobs that should not be trusted run as
//! another user (`user:` in the job file).

use std::ops::Range;

/// The byte a secret's characters are overwritten with.
const SCRUBBED: u8 = b'x';

/// Make this process unreadable to other processes of its user: its `environ`, `fd/`, `maps`,
/// `mem` (and ptrace) become root's alone, and it dumps no core.
pub fn forbid_inspection() -> nix::Result<()> {
    nix::sys::prctl::set_dumpable(false)
}

/// Overwrite the values of the secret `flags` (`--flag VALUE` or `--flag=VALUE`) in the command
/// line the kernel shows as `/proc/PID/cmdline`, and remove the secret `variables` from this
/// process's environment and overwrite their values in the block it shows as `environ`. Returns
/// how many values were overwritten.
///
/// Call it before any thread is started: it changes the environment. Without /proc there is
/// nothing to show and nothing to do; a command line that is not where the kernel says (it would
/// take another program rewriting its own title) is an error when it carries a secret flag.
pub fn scrub_secrets(flags: &[String], variables: &[String]) -> Result<usize, String> {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return Ok(0) };
    let Some((arguments, environment)) = areas(&stat) else { return Ok(0) };
    let args: Vec<Vec<u8>> = std::env::args_os().map(std::os::unix::ffi::OsStringExt::into_vec).collect();
    // SAFETY: see `overwrite`; reading is covered by the same reasoning.
    let command_line = unsafe { copy(&arguments) };
    let flagged = secret_flag_count(&args, flags);
    let argument_ranges = match command_line_ranges(&command_line, &args, flags) {
        Some(ranges) => ranges,
        None if flagged == 0 => Vec::new(),
        None => {
            return Err("the command line is not where the kernel says it is: its secret flags would stay \
                            readable in /proc; give them by variable or file instead"
                .to_owned());
        }
    };
    for name in variables {
        if std::env::var_os(name).is_some() {
            // SAFETY: called before any other thread exists (the caller's promise), so nothing
            // reads the environment meanwhile.
            unsafe { std::env::remove_var(name) };
        }
    }
    // SAFETY: as above.
    let environment_block = unsafe { copy(&environment) };
    let variable_ranges = variable_ranges(&environment_block, variables);
    let count = argument_ranges.len() + variable_ranges.len();
    for (area, ranges) in [(&arguments, argument_ranges), (&environment, variable_ranges)] {
        for range in ranges {
            // SAFETY: see `overwrite`.
            unsafe { overwrite(area, range) };
        }
    }
    Ok(count)
}

/// Where the kernel keeps this process's command line and environment strings: fields 48 to 51
/// of `/proc/self/stat` (`arg_start`, `arg_end`, `env_start`, `env_end`; proc(5)).
fn areas(stat: &str) -> Option<(Range<usize>, Range<usize>)> {
    // The command name, field 2, is in parentheses and may hold anything: count after its end.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |number: usize| fields.get(number - 3)?.parse::<usize>().ok();
    let (arguments, environment) = (field(48)?..field(49)?, field(50)?..field(51)?);
    (arguments.start < arguments.end && environment.start <= environment.end).then_some((arguments, environment))
}

/// A copy of the bytes of `area`.
///
/// # Safety
/// `area` is this process's argument or environment block as `/proc/self/stat` names it.
unsafe fn copy(area: &Range<usize>) -> Vec<u8> {
    let mut bytes = vec![0u8; area.len()];
    // SAFETY: the block is mapped and readable for the life of the process (the initial stack).
    unsafe { std::ptr::copy_nonoverlapping(area.start as *const u8, bytes.as_mut_ptr(), area.len()) };
    bytes
}

/// Overwrite `range` (relative to `area`) with [`SCRUBBED`].
///
/// # Safety
/// `area` is this process's argument or environment block as `/proc/self/stat` names it, and
/// `range` lies within it. The block is on the process's initial stack, mapped read-write for its
/// whole life; no Rust reference to it exists (std and libc read the strings through raw pointers
/// when asked), no other thread runs yet, and the environment entries overwritten were first
/// removed from libc's `environ`, so nothing reads them meanwhile.
unsafe fn overwrite(area: &Range<usize>, range: Range<usize>) {
    debug_assert!(range.end <= area.len());
    // SAFETY: the caller's promise.
    unsafe { std::ptr::write_bytes((area.start + range.start) as *mut u8, SCRUBBED, range.len()) };
}

/// How many of `args` are secret flags (`--flag`, with its value next, or `--flag=value`).
fn secret_flag_count(args: &[Vec<u8>], flags: &[String]) -> usize {
    args.iter()
        .filter(|arg| {
            flags
                .iter()
                .any(|flag| arg.as_slice() == flag.as_bytes() || arg.starts_with(&[flag.as_bytes(), b"="].concat()))
        })
        .count()
}

/// The ranges of `block` (the command line: each argument followed by a NUL) that hold the
/// values of secret `flags`; `None` when the block does not hold exactly `args`.
fn command_line_ranges(block: &[u8], args: &[Vec<u8>], flags: &[String]) -> Option<Vec<Range<usize>>> {
    let mut strings = Vec::with_capacity(args.len());
    let mut start = 0;
    for (at, byte) in block.iter().enumerate() {
        if *byte == 0 {
            strings.push(start..at);
            start = at + 1;
        }
    }
    let found: Vec<&[u8]> = strings.iter().map(|range| &block[range.clone()]).collect();
    if found.len() != args.len() || found.iter().zip(args).any(|(found, arg)| *found != arg.as_slice()) {
        return None;
    }
    let mut ranges = Vec::new();
    let mut value_follows = false;
    for (range, arg) in strings.into_iter().zip(args) {
        if std::mem::take(&mut value_follows) {
            ranges.push(range);
            continue;
        }
        if arg == b"--" {
            break;
        }
        for flag in flags {
            if arg.as_slice() == flag.as_bytes() {
                value_follows = true;
            } else if arg.starts_with(flag.as_bytes()) && arg.get(flag.len()) == Some(&b'=') {
                ranges.push(range.start + flag.len() + 1..range.end);
            }
        }
    }
    Some(ranges.into_iter().filter(|range| !range.is_empty()).collect())
}

/// The ranges of `block` (the environment: `NAME=value` strings, each followed by a NUL) that
/// hold the values of the secret `variables`.
fn variable_ranges(block: &[u8], variables: &[String]) -> Vec<Range<usize>> {
    let mut ranges = Vec::new();
    let mut start = 0;
    for (at, byte) in block.iter().enumerate() {
        if *byte != 0 {
            continue;
        }
        let entry = &block[start..at];
        for name in variables {
            if entry.starts_with(name.as_bytes()) && entry.get(name.len()) == Some(&b'=') {
                ranges.push(start + name.len() + 1..at);
            }
        }
        start = at + 1;
    }
    ranges.into_iter().filter(|range| !range.is_empty()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(strings: &[&str]) -> Vec<u8> {
        strings.iter().flat_map(|s| s.bytes().chain([0])).collect()
    }

    fn scrubbed(block: &[u8], ranges: &[Range<usize>]) -> String {
        let mut block = block.to_vec();
        for range in ranges {
            block[range.clone()].fill(SCRUBBED);
        }
        String::from_utf8(block).unwrap().replace('\0', " ")
    }

    #[test]
    fn secret_flags_lose_their_values_in_either_form_and_nothing_else_changes() {
        let flags = ["--admin-token".to_owned(), "--database-url".to_owned()];
        let args =
            ["tenure", "run", "--admin-token", "s3cret", "--database-url=postgres://u:pw@h/db", "--jobs", "j.yaml"];
        let block = super::tests::block(&args);
        let args: Vec<Vec<u8>> = args.iter().map(|arg| arg.as_bytes().to_vec()).collect();
        let ranges = command_line_ranges(&block, &args, &flags).unwrap();
        assert_eq!(
            scrubbed(&block, &ranges),
            "tenure run --admin-token xxxxxx --database-url=xxxxxxxxxxxxxxxxxxxx --jobs j.yaml "
        );
        assert_eq!(secret_flag_count(&args, &flags), 2);
        // A flag's name as another flag's value, or after `--`, is no flag.
        let other = ["tenure", "--jobs=--admin-token", "--", "--admin-token", "x"];
        let other_block = super::tests::block(&other);
        let other: Vec<Vec<u8>> = other.iter().map(|arg| arg.as_bytes().to_vec()).collect();
        assert_eq!(command_line_ranges(&other_block, &other, &flags), Some(vec![]));
        // Not the command line std read: nothing is touched.
        assert_eq!(command_line_ranges(&block, &other, &flags), None);
    }

    #[test]
    fn secret_variables_lose_their_values_and_their_names_stay() {
        let block = block(&["HOME=/root", "TENURE_ADMIN_TOKEN=abc", "TENURE_ADMIN_TOKEN_FILE=/x", "EMPTY="]);
        let variables = ["TENURE_ADMIN_TOKEN".to_owned(), "EMPTY".to_owned()];
        let ranges = variable_ranges(&block, &variables);
        assert_eq!(scrubbed(&block, &ranges), "HOME=/root TENURE_ADMIN_TOKEN=xxx TENURE_ADMIN_TOKEN_FILE=/x EMPTY= ");
    }

    #[test]
    fn the_secret_arguments_are_the_ones_whose_values_the_command_line_hides() {
        let (flags, variables) = crate::cli::secret_arguments();
        assert_eq!(flags, ["--admin-token", "--database-url", "--etcd-password", "--heartbeat-url"]);
        assert_eq!(
            variables,
            [
                "TENURE_ADMIN_TOKEN",
                "TENURE_DATABASE_URL",
                "TENURE_ETCD_PASSWORD",
                "TENURE_HEARTBEAT_URL",
                "TENURE_OIDC_CLIENT_SECRET"
            ]
        );
    }

    #[test]
    fn the_blocks_are_read_from_the_fields_proc_stat_gives() {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        let (arguments, environment) = areas(&stat).expect("this kernel shows them");
        // SAFETY: the blocks /proc/self/stat names.
        let command_line = unsafe { copy(&arguments) };
        assert_eq!(command_line, std::fs::read("/proc/self/cmdline").unwrap());
        assert!(environment.start >= arguments.end);
        // A command name with spaces and parentheses does not shift the fields.
        let odd = stat.replacen('(', "(a) b (", 1);
        assert_eq!(areas(&odd), Some((arguments, environment)));
    }
}
