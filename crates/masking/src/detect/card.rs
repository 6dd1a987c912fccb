//! Payment card numbers: 13–19 digits that pass the Luhn check, written
//! plain or grouped the way cards are printed (`4111 1111 1111 1111`,
//! `3782-822463-10005`).
//!
//! The Luhn check alone lets one random digit string in ten through, so
//! the layout is checked too: plain, or one separator kind in a printed
//! grouping. A run of groups (`12 4111 1111 1111 1111`, or two cards side
//! by side) is tried from every group so the card inside is still found.

use super::{digits_at, next_start, word_at, word_before, Detector, Finding};

pub(super) const MIN_DIGITS: usize = 13;
const MAX_DIGITS: usize = 19;

/// A run of digits, and the separator byte before it (0 for the first).
#[derive(Debug, Clone, Copy)]
struct Group {
    start: usize,
    end: usize,
    sep: u8,
}

impl Group {
    fn len(&self) -> usize {
        self.end - self.start
    }
}

pub(super) fn scan(text: &str, out: &mut Vec<Finding>) {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_digit() || word_before(b, i) {
            i = next_start(b, i);
            continue;
        }
        i = scan_run(b, i, out);
    }
}

/// How many groups of a run [`longest_card`] is shown at a time. It looks
/// at six at most: inner groups have four digits (or six, the second of an
/// American Express layout) and a card at most 19, so a sixth group only
/// tells that the fifth is not the last.
const WINDOW: usize = 8;

/// Pushes the longest card starting at each group of the run of digit
/// groups (joined by single spaces or dashes) at `i`, left to right, and
/// returns where the run ends. The groups are read as the scan moves along
/// them, into a window on the stack: runs of digits are in most results.
fn scan_run(b: &[u8], i: usize, out: &mut Vec<Finding>) -> usize {
    let mut window = [Group {
        start: 0,
        end: 0,
        sep: 0,
    }; WINDOW];
    let (mut len, mut next, mut run_end) = (0, Some((i, 0)), i + 1);
    loop {
        while let (true, Some((start, sep))) = (len < WINDOW, next) {
            let group = group_at(b, start, sep);
            (window[len], run_end, next) = (group, group.end, group_after(b, group.end));
            len += 1;
        }
        if len == 0 {
            return run_end;
        }
        let taken = match longest_card(b, &window[..len]) {
            Some(n) => {
                let (start, end) = (window[0].start, window[n - 1].end);
                out.push(Finding::new(Detector::CreditCard, start, end));
                n
            }
            None => 1,
        };
        window.copy_within(taken..len, 0);
        len -= taken;
    }
}

/// The digits at `start`, after the separator `sep` (0 for a run's first).
fn group_at(b: &[u8], start: usize, sep: u8) -> Group {
    Group {
        start,
        end: start + digits_at(b, start),
        sep,
    }
}

/// Where the next group of a run starts after a group ending at `end`, and
/// the separator before it.
fn group_after(b: &[u8], end: usize) -> Option<(usize, u8)> {
    match (b.get(end), b.get(end + 1)) {
        (Some(&s @ (b' ' | b'-')), Some(d)) if d.is_ascii_digit() => Some((end + 1, s)),
        _ => None,
    }
}

/// How many groups from the start of `groups` form the longest valid card.
fn longest_card(b: &[u8], groups: &[Group]) -> Option<usize> {
    let mut best = None;
    let mut digits = 0;
    for n in 1..=groups.len() {
        // Stop as soon as no longer run can have a printed layout, so long
        // runs of short numbers (`1 2 3 …`) cost little.
        if n >= 2 && !(inner_ok(groups, n - 2) && groups[n - 1].sep == groups[1].sep) {
            break;
        }
        digits += groups[n - 1].len();
        if digits > MAX_DIGITS {
            break;
        }
        // The last group of the run must not be glued to a word.
        let clean_end = n < groups.len() || !word_at(b, groups[n - 1].end);
        if digits >= MIN_DIGITS && clean_end && last_ok(&groups[..n]) && luhn(b, &groups[..n]) {
            best = Some(n);
        }
    }
    best
}

/// Groups before the last are fours, or 4-6 (American Express, Diners).
fn inner_ok(groups: &[Group], k: usize) -> bool {
    groups[k].len() == 4 || (k == 1 && groups[0].len() == 4 && groups[1].len() == 6)
}

/// The last group fits the layout of the ones before it (plain digits
/// when there is only one group).
fn last_ok(groups: &[Group]) -> bool {
    let last = groups[groups.len() - 1].len();
    match groups {
        [_] => true,
        [first, second, _] if first.len() == 4 && second.len() == 6 => last == 4 || last == 5,
        _ => (1..=4).contains(&last),
    }
}

/// The Luhn mod-10 check over the digits of `groups`.
fn luhn(b: &[u8], groups: &[Group]) -> bool {
    // Every second digit from the right counts doubled, digit sum taken; a
    // table and a flip-flop instead of a branch on `dd > 9` per digit.
    const DOUBLED: [u32; 10] = [0, 2, 4, 6, 8, 1, 3, 5, 7, 9];
    let (mut sum, mut double) = (0, false);
    for g in groups.iter().rev() {
        for &c in b[g.start..g.end].iter().rev() {
            let d = usize::from(c - b'0');
            sum += if double { DOUBLED[d] } else { d as u32 };
            double = !double;
        }
    }
    sum.is_multiple_of(10)
}

/// Luhn over a plain digit string, for tests and generators.
#[cfg(test)]
pub(super) fn luhn_str(s: &str) -> bool {
    let g = Group {
        start: 0,
        end: s.len(),
        sep: 0,
    };
    s.bytes().all(|c| c.is_ascii_digit()) && luhn(s.as_bytes(), &[g])
}
