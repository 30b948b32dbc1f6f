//! Feature exploration (slow path, char level): which extra per-sample
//! features would lower the held-out spread, before any goes into the fast pass.

use super::*;

fn is_lat(c: char) -> bool {
    c.is_ascii_alphabetic() || (('\u{C0}'..='\u{24F}').contains(&c) && c.is_alphabetic())
}

fn extras(text: &str, groups: &str) -> Vec<f64> {
    let groups: Vec<&str> = groups.split(',').collect();
    let groups = Group(&groups);
    let mut v = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    if groups.contains("wlen") {
        // letters beyond position k of a Latin / Cyrillic word
        for script in 0..2 {
            let inw = |c: char| {
                if script == 0 {
                    is_lat(c)
                } else {
                    ('\u{400}'..='\u{52F}').contains(&c)
                }
            };
            let mut f = [0.0; 4];
            let mut run = 0;
            for &c in &chars {
                if inw(c) {
                    run += 1;
                    for (j, k) in [3, 6, 9, 12].iter().enumerate() {
                        if run > *k {
                            f[j] += 1.0;
                        }
                    }
                } else {
                    run = 0;
                }
            }
            v.extend(f);
        }
    }
    if groups.contains("han") {
        let mut f = [0.0; 24];
        for &c in &chars {
            let u = c as u32;
            if (0x4000..0xA000).contains(&u) {
                f[((u - 0x4000) >> 10) as usize] += 1.0;
            }
        }
        v.extend(f);
    }
    if groups.contains("cyr") {
        let mut f = [0.0; 10];
        for &c in &chars {
            let u = c as u32;
            if (0x400..0x530).contains(&u) {
                f[(((u - 0x400) >> 5) as usize).min(9)] += 1.0;
            }
        }
        v.extend(f);
    }
    if groups.contains("cyr3") {
        // what the fast pass could tell with one more continuation class:
        // capitals (U+0400..U+042F), capitals after capitals, letters beyond
        // Russian's lower case (U+0450..U+052F)
        let mut f = [0.0; 3];
        let mut prev_cap = false;
        for &c in &chars {
            let u = c as u32;
            let cap = (0x400..0x430).contains(&u);
            if cap {
                f[0] += 1.0;
                if prev_cap {
                    f[1] += 1.0;
                }
            }
            if (0x450..0x530).contains(&u) {
                f[2] += 1.0;
            }
            prev_cap = cap;
        }
        v.extend(f);
    }
    if groups.contains("han6") {
        // Han by UTF-8 lead byte (U+4000..U+9FFF in six 4096 blocks): what the
        // fast pass could tell with five more byte classes
        let mut f = [0.0; 6];
        for &c in &chars {
            let u = c as u32;
            if (0x4000..0xA000).contains(&u) {
                f[((u - 0x4000) >> 12) as usize] += 1.0;
            }
        }
        v.extend(f);
    }
    if groups.contains("uni") {
        let mut f = [0.0; 26];
        for &c in &chars {
            if c.is_ascii_alphabetic() {
                f[(c.to_ascii_lowercase() as u8 - b'a') as usize] += 1.0;
            }
        }
        v.extend(f);
    }
    if groups.contains("digits") {
        // digit runs: tokenizers cut them in groups of up to three
        let mut f = [0.0; 3];
        for run in runs(&chars, |c| c.is_ascii_digit()) {
            f[0] += run.div_ceil(3) as f64;
            f[1] += f64::from(u8::from(run >= 4));
            f[2] += run.saturating_sub(6) as f64;
        }
        v.extend(f);
    }
    if groups.contains("ws") {
        // long runs of spaces (indentation, alignment): merged into few tokens
        let mut f = [0.0; 5];
        for run in runs(&chars, |c| c == ' ') {
            for (j, k) in [2usize, 4, 8, 16].iter().enumerate() {
                if run >= *k {
                    f[j] += 1.0;
                }
            }
            f[4] += run.saturating_sub(16) as f64;
        }
        v.extend(f);
    }
    if groups.contains("path") {
        // path- and URL-like words: a run of non-space with / or \ or ://
        let mut f = [0.0; 3];
        for w in text.split_whitespace() {
            if w.contains('/') || w.contains('\\') {
                f[0] += 1.0;
                f[1] += w.matches(['/', '\\']).count() as f64;
                f[2] += f64::from(u8::from(w.contains("://")));
            }
        }
        v.extend(f);
    }
    if groups.contains("b64") {
        // base64- or hex-like runs: 16+ of [A-Za-z0-9+/=_-] mixing digits and letters
        let mut f = [0.0; 2];
        let is = |c: char| c.is_ascii_alphanumeric() || "+/=_-".contains(c);
        let mut start = 0;
        for (k, &c) in chars.iter().chain(std::iter::once(&' ')).enumerate() {
            if !is(c) {
                let w = &chars[start..k.min(chars.len())];
                if w.len() >= 16
                    && w.iter().any(char::is_ascii_digit)
                    && w.iter().any(char::is_ascii_alphabetic)
                {
                    f[0] += 1.0;
                    f[1] += w.len() as f64;
                }
                start = k + 1;
            }
        }
        v.extend(f);
    }
    if groups.contains("kana") {
        // hiragana, katakana and CJK punctuation apart (one feature today)
        let mut f = [0.0; 3];
        for &c in &chars {
            match c as u32 {
                0x3040..=0x309F => f[0] += 1.0,
                0x30A0..=0x30FF => f[1] += 1.0,
                0x3000..=0x303F => f[2] += 1.0,
                _ => {}
            }
        }
        v.extend(f);
    }
    if groups.contains("rare") {
        // rare Latin letters (j k q v w x y z) and Han outside the commonest
        // block (U+4E00..U+7FFF holds most everyday characters)
        let mut f = [0.0; 2];
        for &c in &chars {
            if "jkqvwxyzJKQVWXYZ".contains(c) {
                f[0] += 1.0;
            }
            if (0x8000..0xA000).contains(&(c as u32)) {
                f[1] += 1.0;
            }
        }
        v.extend(f);
    }
    if groups.contains("hang") {
        // Hangul syllables: with a final consonant (batchim) or not
        let mut f = [0.0; 2];
        for &c in &chars {
            let u = c as u32;
            if (0xAC00..0xD7A4).contains(&u) {
                f[usize::from(!(u - 0xAC00).is_multiple_of(28))] += 1.0;
            }
        }
        v.extend(f);
    }
    v
}

/// The groups asked for, by exact name.
struct Group<'a>(&'a [&'a str]);

impl Group<'_> {
    fn contains(&self, name: &str) -> bool {
        self.0.contains(&name)
    }
}

/// Lengths of the maximal runs of characters with `p`.
fn runs(chars: &[char], p: impl Fn(char) -> bool) -> Vec<usize> {
    let mut out = Vec::new();
    let mut n = 0;
    for &c in chars {
        if p(c) {
            n += 1;
        } else if n > 0 {
            out.push(n);
            n = 0;
        }
    }
    if n > 0 {
        out.push(n);
    }
    out
}

fn nnls(rows: &[(Vec<f64>, f64)], prior: &[f64], ridge: f64) -> Vec<f64> {
    let dim = prior.len();
    let mut active = vec![true; dim];
    loop {
        let idx: Vec<usize> = (0..dim).filter(|&i| active[i]).collect();
        let n = idx.len();
        let mut a = vec![vec![0.0; n + 1]; n];
        for (x, y) in rows {
            let w = 1.0 / (y * y);
            for (r, &i) in idx.iter().enumerate() {
                if x[i] == 0.0 {
                    continue;
                }
                for (c, &j) in idx.iter().enumerate() {
                    a[r][c] += w * x[i] * x[j];
                }
                a[r][n] += w * x[i] * y;
            }
        }
        for (r, &i) in idx.iter().enumerate() {
            a[r][r] += ridge;
            a[r][n] += ridge * prior[i];
        }
        let sol = solve(a);
        let mut out = vec![0.0; dim];
        for (r, &i) in idx.iter().enumerate() {
            out[i] = sol[r];
        }
        match (0..dim)
            .filter(|&i| active[i] && out[i] < 0.0)
            .min_by(|&a, &b| out[a].total_cmp(&out[b]))
        {
            Some(w) => active[w] = false,
            None => return out,
        }
    }
}

/// The candidate groups `explore all` compares, with what each adds.
const CANDIDATES: [(&str, &str); 14] = [
    ("", "nothing: the estimator's features"),
    (
        "wlen",
        "Latin and Cyrillic letters beyond the 3rd, 6th, 9th, 12th of their word",
    ),
    (
        "digits",
        "digit runs in groups of three, runs of 4+, digits beyond 6",
    ),
    ("ws", "space runs of 2+, 4+, 8+, 16+ and spaces beyond 16"),
    ("path", "path- and URL-like words, their slashes, `://`"),
    (
        "b64",
        "base64- or hex-like runs (16+ of [A-Za-z0-9+/=_-] with digits and letters)",
    ),
    ("kana", "hiragana, katakana, CJK punctuation apart"),
    ("rare", "rare Latin letters (jkqvwxyz), Han beyond U+7FFF"),
    (
        "hang",
        "Hangul syllables with and without a final consonant",
    ),
    ("han", "Han in 24 blocks of 1024 code points"),
    ("han6", "Han by UTF-8 lead byte (6 blocks)"),
    ("cyr", "Cyrillic in 10 blocks of 32 code points"),
    (
        "cyr3",
        "Cyrillic capitals, capitals after capitals, letters beyond Russian's",
    ),
    ("uni", "each Latin letter a-z"),
];

const EXPLORE_MD: &str = "tests/tokenbench/results/explore.md";

/// `explore all`: every candidate group alone and all of them together,
/// written to results/explore.md.
pub fn explore_all(ridge: f64) -> Result<(), String> {
    let all = CANDIDATES
        .iter()
        .map(|c| c.0)
        .filter(|g| !g.is_empty() && *g != "han" && *g != "cyr")
        .collect::<Vec<_>>()
        .join(",");
    let mut md = String::from(
        "# Candidate features\n\n\
         Generated by `cargo run --release -p llm-tokenbench -- explore all`. Each candidate group \
         of per-sample counts (computed at character level, not in the fast pass) is added to the \
         estimator's features; coefficients for both are refitted on the training half (the same \
         non-negative weighted least squares as `fit`), and the held-out half is estimated with \
         them. Each cell: uncalibrated p90 / calibrated p90 (the filter's calibration, one model \
         per class, the first 20 samples only teach), in percent; the last column their means \
         over the eight classes. A group that does not lower the spread materially (a point or \
         more of the mean, or a class's p90 well below its target) is not worth a place in the \
         one-pass estimator.\n\n\
         | added | enc | english | code | json | latin | cyrillic | cjk | korean | other | mean |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (g, _) in CANDIDATES.iter().copied().chain([(all.as_str(), "")]) {
        md.push_str(&explore_rows(g, ridge)?);
    }
    md.push_str("\nGroups:\n\n");
    for (g, what) in CANDIDATES.iter().filter(|c| !c.0.is_empty()) {
        md.push_str(&format!("- `{g}`: {what}\n"));
    }
    md.push_str(&format!(
        "- `{all}`: all of them but the block-wise `han` and `cyr`\n"
    ));
    std::fs::write(EXPLORE_MD, &md).map_err(|e| format!("{EXPLORE_MD}: {e}"))?;
    print!("{md}");
    Ok(())
}

pub fn explore(groups: &str, ridge: f64) -> Result<(), String> {
    if groups == "all" {
        return explore_all(ridge);
    }
    print!("{}", explore_rows(groups, ridge)?);
    Ok(())
}

/// The table rows (one per encoding) of one candidate group.
fn explore_rows(groups: &str, ridge: f64) -> Result<String, String> {
    let mut out = String::new();
    let d = load()?;
    let (train, test) = split(&d);
    let x: Vec<Vec<f64>> = d
        .samples
        .iter()
        .map(|s| {
            let mut v = features(s).to_vec();
            for p in &s.pieces {
                let e = extras(p, groups);
                if v.len() == FEATURES {
                    v.extend(e);
                } else {
                    for (a, b) in v[FEATURES..].iter_mut().zip(e) {
                        *a += b;
                    }
                }
            }
            v
        })
        .collect();
    let dim = x[0].len();
    for (e, &enc) in EXACT.iter().enumerate() {
        let mut prior = priors(enc).to_vec();
        prior.resize(dim, 0.0);
        let rows: Vec<_> = train
            .iter()
            .filter(|&&i| d.exact[i][e] > 0)
            .map(|&i| (x[i].clone(), d.exact[i][e] as f64))
            .collect();
        let w = nnls(&rows, &prior, ridge);
        let est = |i: usize| {
            x[i].iter()
                .zip(&w)
                .map(|(a, b)| a * b)
                .sum::<f64>()
                .ceil()
                .max(1.0)
        };
        let st = streams(&d, &test, e, &est, FILTER, CAL_WARMUP);
        let mut line = format!(
            "| {} | {} |",
            if groups.is_empty() { "(none)" } else { groups },
            enc.as_str()
        );
        let mut tot = (0.0, 0.0);
        for c in REAL_CLASSES {
            let (u, k) = (
                stats(&of_class(&st.raw, &d, c)).p90,
                stats(&of_class(&st.cal, &d, c)).p90,
            );
            tot.0 += u;
            tot.1 += k;
            let _ = write!(line, " {:.1} / {:.1} |", u * 100.0, k * 100.0);
        }
        let _ = write!(
            line,
            " {:.2} / {:.2} |",
            tot.0 / 8.0 * 100.0,
            tot.1 / 8.0 * 100.0
        );
        out.push_str(&line);
        out.push('\n');
    }
    Ok(out)
}
