//! Feature exploration (slow path, char level): which extra per-sample
//! features would lower the held-out spread, before any goes into the fast pass.

use super::*;

fn is_lat(c: char) -> bool {
    c.is_ascii_alphabetic() || (('\u{C0}'..='\u{24F}').contains(&c) && c.is_alphabetic())
}

fn extras(text: &str, groups: &str) -> Vec<f64> {
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
    if groups.contains("uni") {
        let mut f = [0.0; 26];
        for &c in &chars {
            if c.is_ascii_alphabetic() {
                f[(c.to_ascii_lowercase() as u8 - b'a') as usize] += 1.0;
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

pub fn explore(groups: &str, ridge: f64) -> Result<(), String> {
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
        let mut line = format!("{:6} {groups:12}", enc.as_str());
        let mut tot = (0.0, 0.0);
        for c in REAL_CLASSES {
            let p = |idx: &[usize]| -> Vec<(f64, f64)> {
                idx.iter()
                    .filter(|&&i| d.samples[i].class == c)
                    .map(|&i| (est(i), d.exact[i][e] as f64))
                    .collect()
            };
            let te = p(&test);
            let tr = p(&train);
            let (fl, _) = floor(&te);
            let s = stats(&te).p90;
            tot.0 += s;
            tot.1 += fl;
            let _ = write!(
                line,
                " {c}:{:.1}/{:.1}/{:.1}",
                stats(&tr).p90 * 100.0,
                s * 100.0,
                fl * 100.0
            );
        }
        let _ = write!(
            line,
            " | mean test p90 {:.2} floor {:.2}",
            tot.0 / 8.0 * 100.0,
            tot.1 / 8.0 * 100.0
        );
        println!("{line}");
    }
    Ok(())
}
