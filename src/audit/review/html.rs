//! The review as one self-contained HTML page: inline CSS, charts drawn as
//! inline SVG, no script and nothing fetched, so it opens anywhere,
//! offline, and can be archived as it is. Every value from the trail (file
//! names, user and program names) is escaped: a hostile file name is text.

use super::findings::{Evidence, Finding, Severity};
use super::{Counts, Review, user_label};
use std::fmt::Write;

/// Rows of the folder table shown (the JSON has them all).
const FOLDER_ROWS: usize = 500;

pub fn render(r: &Review) -> String {
    let mut h = String::with_capacity(64 * 1024);
    let title = format!("Access review of volume {}", short(&r.volume));
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n",
        esc(&title)
    );
    header(&mut h, r, &title);
    integrity(&mut h, r);
    findings(&mut h, &r.findings);
    activity(&mut h, r);
    users(&mut h, r);
    folders(&mut h, r);
    let _ = write!(
        h,
        "<footer><p>Report digest (SHA-256 of its data): <code id=\"digest\">{}</code>. Two reviews of the same \
         trail, period and filter have the same digest, whenever and wherever they were made: compare it to know \
         two copies say the same.</p><p>Made by <code>s3vault audit review</code>. Every record above comes from \
         the volume's encrypted, chained audit trail; the verdict at the top says whether that trail was \
         checked intact.</p></footer>\n</body>\n</html>\n",
        esc(&r.digest)
    );
    h
}

fn header(h: &mut String, r: &Review, title: &str) {
    let period = match &r.since {
        Some(since) => format!("{since} to {}", r.until),
        None => format!("everything up to {}", r.until),
    };
    let _ = write!(
        h,
        "<header><h1>{}</h1><dl class=\"facts\"><dt>Volume</dt><dd><code>{}</code></dd><dt>Period</dt><dd>{}</dd>\
         <dt>Times shown in</dt><dd>{}</dd><dt>Working hours</dt><dd>{}</dd>",
        esc(title),
        esc(&r.volume),
        esc(&period),
        esc(&r.timezone),
        esc(&r.working_hours)
    );
    if let Some(path) = &r.path_filter {
        let _ = write!(h, "<dt>Paths</dt><dd><code>{}</code> only</dd>", esc(path));
    }
    if let Some(user) = &r.user_filter {
        let _ = write!(h, "<dt>User</dt><dd>{} only</dd>", esc(user));
    }
    let _ = writeln!(
        h,
        "<dt>Records</dt><dd>{} in the period, of {} read</dd><dt>Generated</dt><dd>{}</dd></dl></header>",
        r.records_in_period,
        r.records_read,
        esc(&r.generated)
    );
}

fn integrity(h: &mut String, r: &Review) {
    let i = &r.integrity;
    let class = if i.intact { "verdict ok" } else { "verdict bad" };
    let _ = write!(
        h,
        "<section id=\"integrity\" class=\"{class}\"><h2>Can this report be trusted?</h2><p class=\"answer\">{}</p>\
         <dl class=\"facts\"><dt>Hosts</dt><dd>{}</dd><dt>Chains</dt><dd>{}</dd><dt>Segments</dt><dd>{}</dd>\
         <dt>Records checked</dt><dd>{}</dd>",
        esc(&i.verdict),
        esc(&i.hosts.join(", ")),
        i.chains,
        i.segments,
        i.records
    );
    if let Some((lo, hi)) = i.generations {
        let _ = write!(h, "<dt>Metadata generations</dt><dd>{lo} to {hi}</dd>");
    }
    h.push_str("</dl>");
    if !i.problems.is_empty() {
        h.push_str("<h3>What is wrong</h3><ul class=\"problems\">");
        for p in &i.problems {
            let _ = write!(h, "<li>{}</li>", esc(&p.to_string()));
        }
        h.push_str("</ul>");
    }
    if !i.open_chains.is_empty() {
        h.push_str(
            "<h3>Chains still open</h3><p>These hosts mounted the volume and have not unmounted yet (or stopped \
             without unmounting): their latest records are still on their own disks.</p><ul>",
        );
        for c in &i.open_chains {
            let _ = write!(h, "<li>{}</li>", esc(c));
        }
        h.push_str("</ul>");
    }
    h.push_str("</section>\n");
}

fn severity_name(s: Severity) -> &'static str {
    match s {
        Severity::High => "high",
        Severity::Medium => "medium",
        Severity::Low => "low",
        Severity::Info => "info",
    }
}

fn findings(h: &mut String, findings: &[Finding]) {
    let unusual = findings.iter().filter(|f| f.severity != Severity::Info).count();
    let _ = write!(h, "<section id=\"findings\"><h2>Unusual access ({unusual})</h2>");
    if findings.is_empty() {
        h.push_str("<p class=\"none\">Nothing unusual was found in the period.</p></section>\n");
        return;
    }
    h.push_str(
        "<table class=\"findings\"><thead><tr><th>Severity</th><th>Kind</th><th>What happened</th><th>When</th>\
         <th>Records</th></tr></thead><tbody>",
    );
    for f in findings {
        let sev = severity_name(f.severity);
        let when = match (&f.first, &f.last) {
            (Some(a), Some(b)) if a == b => esc(a),
            (Some(a), Some(b)) => format!("{} to {}", esc(a), esc(b)),
            _ => String::new(),
        };
        let _ = write!(
            h,
            "<tr class=\"finding {sev}\" data-kind=\"{}\"><td><span class=\"sev {sev}\">{sev}</span></td><td>{}</td>\
             <td>{}",
            esc(f.kind),
            esc(f.kind),
            esc(&f.summary)
        );
        if !f.records.is_empty() {
            let shown = if (f.records.len() as u64) < f.count {
                format!("the first {} of {} records", f.records.len(), f.count)
            } else {
                format!("{} record(s)", f.records.len())
            };
            let _ = write!(h, "<details><summary>Show {shown}</summary>");
            evidence(h, &f.records);
            h.push_str("</details>");
        }
        let _ = write!(h, "</td><td>{when}</td><td class=\"num\">{}</td></tr>", f.count);
    }
    h.push_str("</tbody></table></section>\n");
}

fn evidence(h: &mut String, records: &[Evidence]) {
    h.push_str(
        "<table class=\"evidence\"><thead><tr><th>Time</th><th>Host</th><th>User</th><th>Event</th><th>Result</th>\
         <th>Program</th><th>Path or detail</th></tr></thead><tbody>",
    );
    for e in records {
        let what = e.path.as_deref().or(e.detail.as_deref()).unwrap_or("");
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
            esc(&e.time),
            esc(&e.host),
            esc(&user_label(e.uid, e.user.as_deref())),
            esc(e.event),
            esc(&e.result),
            esc(&e.program),
            esc(what)
        );
    }
    h.push_str("</tbody></table>");
}

const SERIES: [(&str, &str); 4] = [
    ("opens", "#2b6cb0"),
    ("writes", "#dd6b20"),
    ("deletes", "#805ad5"),
    ("denied", "#c53030"),
];

fn values(c: &Counts) -> [u64; 4] {
    [c.opens, c.writes, c.deletes, c.denied]
}

fn activity(h: &mut String, r: &Review) {
    h.push_str("<section id=\"activity\"><h2>Activity over time</h2>");
    if r.days.is_empty() {
        h.push_str("<p class=\"none\">No file was accessed in the period.</p></section>\n");
        return;
    }
    h.push_str("<p class=\"legend\">");
    for (name, color) in SERIES {
        let _ = write!(h, "<span><i style=\"background:{color}\"></i>{name}</span>");
    }
    h.push_str("</p><h3>Per day</h3>");
    let bars: Vec<(String, [u64; 4])> = r.days.iter().map(|d| (d.date.clone(), values(&d.counts))).collect();
    chart(h, "chart-days", &bars);
    h.push_str("<h3>Per hour of the day</h3>");
    let bars: Vec<(String, [u64; 4])> = r
        .hours
        .iter()
        .enumerate()
        .map(|(hour, c)| (format!("{hour:02}h"), values(c)))
        .collect();
    chart(h, "chart-hours", &bars);
    h.push_str("</section>\n");
}

/// A stacked bar chart, one bar per label.
fn chart(h: &mut String, id: &str, bars: &[(String, [u64; 4])]) {
    let (width, height, left, bottom, top) = (900.0, 220.0, 48.0, 28.0, 12.0);
    let max = bars
        .iter()
        .map(|(_, v)| v.iter().sum::<u64>())
        .max()
        .unwrap_or(0)
        .max(1);
    let plot_w = width - left - 8.0;
    let plot_h = height - bottom - top;
    let slot = plot_w / bars.len() as f64;
    let bar_w = (slot * 0.8).max(1.0);
    let _ = write!(
        h,
        "<svg id=\"{id}\" class=\"chart\" viewBox=\"0 0 {width} {height}\" role=\"img\" \
         xmlns=\"http://www.w3.org/2000/svg\"><line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{}\" \
         class=\"axis\"/><line x1=\"{left}\" y1=\"{0}\" x2=\"{}\" y2=\"{0}\" class=\"axis\"/>\
         <text x=\"{}\" y=\"{}\" class=\"tick\" text-anchor=\"end\">{max}</text>\
         <text x=\"{}\" y=\"{}\" class=\"tick\" text-anchor=\"end\">0</text>",
        top + plot_h,
        width - 8.0,
        left - 4.0,
        top + 10.0,
        left - 4.0,
        top + plot_h,
    );
    let label_every = (bars.len() / 16).max(1);
    for (i, (label, v)) in bars.iter().enumerate() {
        let x = left + slot * i as f64 + (slot - bar_w) / 2.0;
        let mut y = top + plot_h;
        let tip: Vec<String> = SERIES.iter().zip(v).map(|((n, _), c)| format!("{c} {n}")).collect();
        let _ = write!(h, "<g><title>{}: {}</title>", esc(label), tip.join(", "));
        for ((_, color), &count) in SERIES.iter().zip(v) {
            if count == 0 {
                continue;
            }
            let bar_h = plot_h * count as f64 / max as f64;
            y -= bar_h;
            let _ = write!(
                h,
                "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{bar_w:.1}\" height=\"{bar_h:.1}\" fill=\"{color}\"/>"
            );
        }
        h.push_str("</g>");
        if i % label_every == 0 {
            let _ = write!(
                h,
                "<text x=\"{:.1}\" y=\"{}\" class=\"tick\" text-anchor=\"middle\">{}</text>",
                x + bar_w / 2.0,
                height - 8.0,
                esc(label)
            );
        }
    }
    h.push_str("</svg>");
}

fn users(h: &mut String, r: &Review) {
    h.push_str("<section id=\"users\"><h2>Users</h2>");
    if r.users.is_empty() {
        h.push_str("<p class=\"none\">No user accessed files in the period.</p></section>\n");
        return;
    }
    h.push_str(
        "<table><thead><tr><th>User</th><th>Opens</th><th>Distinct files</th><th>Read</th><th>Written</th>\
         <th>Refused</th><th>First access</th><th>Last access</th><th>Hosts</th><th>Programs</th></tr></thead><tbody>",
    );
    for u in &r.users {
        let _ = write!(
            h,
            "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&user_label(u.uid, u.user.as_deref())),
            u.opens,
            u.distinct_files,
            esc(&crate::units::format_size(u.bytes_read)),
            esc(&crate::units::format_size(u.bytes_written)),
            u.denied,
            esc(&u.first),
            esc(&u.last),
            esc(&u.hosts.join(", ")),
            esc(&u.programs.join(", "))
        );
    }
    h.push_str("</tbody></table></section>\n");
}

fn folders(h: &mut String, r: &Review) {
    h.push_str("<section id=\"folders\"><h2>Who opened what</h2>");
    if r.folders.is_empty() {
        h.push_str("<p class=\"none\">No file was opened in the period.</p></section>\n");
        return;
    }
    h.push_str(
        "<p>Per folder: each user who opened files in it, how often, when, and with which programs.</p>\
         <table><thead><tr><th>Folder</th><th>User</th><th>Opens</th><th>First</th><th>Last</th><th>Programs</th>\
         </tr></thead><tbody>",
    );
    for f in r.folders.iter().take(FOLDER_ROWS) {
        let _ = write!(
            h,
            "<tr><td><code>{}</code></td><td>{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&f.folder),
            esc(&user_label(f.uid, f.user.as_deref())),
            f.opens,
            esc(&f.first),
            esc(&f.last),
            esc(&f.programs.join(", "))
        );
    }
    h.push_str("</tbody></table>");
    if r.folders.len() > FOLDER_ROWS {
        let _ = write!(
            h,
            "<p>{} more rows: narrow the review with <code>--path</code>, or see them all with <code>--json</code>.</p>",
            r.folders.len() - FOLDER_ROWS
        );
    }
    h.push_str("</section>\n");
}

fn short(volume: &str) -> &str {
    &volume[..volume.len().min(12)]
}

/// Text made safe for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "
:root{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#1a202c;background:#fff}
body{max-width:1100px;margin:0 auto;padding:24px}
h1{font-size:1.6em;margin:0 0 8px}h2{font-size:1.25em;border-bottom:1px solid #e2e8f0;padding-bottom:4px}
h3{font-size:1em;color:#4a5568}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:2px 16px;margin:8px 0}
dl.facts dt{color:#4a5568}dl.facts dd{margin:0}
section{margin:28px 0}
.verdict{padding:12px 18px;border-radius:6px;border:2px solid}
.verdict.ok{border-color:#2f855a;background:#f0fff4}.verdict.bad{border-color:#c53030;background:#fff5f5}
.verdict .answer{font-size:1.1em;font-weight:600}
table{border-collapse:collapse;width:100%;font-size:.9em}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #e2e8f0;vertical-align:top}
th{background:#f7fafc}td.num{text-align:right;font-variant-numeric:tabular-nums}
table.evidence{margin:6px 0;font-size:.85em}
.sev{display:inline-block;padding:1px 8px;border-radius:10px;color:#fff;font-size:.85em}
.sev.high{background:#c53030}.sev.medium{background:#dd6b20}.sev.low{background:#2b6cb0}.sev.info{background:#718096}
.none{color:#4a5568;font-style:italic}
.legend span{margin-right:16px}.legend i{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:middle}
svg.chart{width:100%;height:auto;background:#fcfcfd}
svg .axis{stroke:#a0aec0;stroke-width:1}svg .tick{font-size:10px;fill:#4a5568}
code{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.95em;word-break:break-all}
footer{margin-top:40px;color:#4a5568;font-size:.85em}
";
