package main

// The results of a run, and how they are printed: a text table on stdout,
// and the same as markdown for -o.

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"time"
)

// value is one client's figure.
type value struct {
	v   float64
	set bool // measured
	na  bool // does not apply to this client (e.g. refusals of the reference)
}

func measured(v float64) value { return value{v: v, set: true} }

var notApplicable = value{na: true}

func (v value) String() string {
	switch {
	case v.na:
		return "n/a"
	case !v.set:
		return "—"
	}
	return number(v.v)
}

// number writes x with three or so significant digits.
func number(x float64) string {
	switch a := math.Abs(x); {
	case a >= 100:
		return fmt.Sprintf("%.0f", x)
	case a >= 10:
		return fmt.Sprintf("%.1f", x)
	case a >= 1:
		return fmt.Sprintf("%.2f", x)
	}
	return fmt.Sprintf("%.3f", x)
}

// row is one figure: one line of the table.
type row struct {
	key               string // stable, for tests and for finding a row
	figure            string // what it is, with its unit
	warren, reference value
}

// ratio is warren's value over the reference's, or "" when there is none.
func (r row) ratio() string {
	if !r.warren.set || !r.reference.set || r.reference.v == 0 {
		return ""
	}
	return fmt.Sprintf("%.2f", r.warren.v/r.reference.v)
}

// detail is the figures of every repetition of one measurement, or of
// the things names.
type detail struct {
	label             string
	names             []string // what each figure is; nil for repetitions
	counts            bool     // the figures are counts: print them as integers
	warren, reference []float64
}

// machine describes where a run was measured.
type machine struct {
	start, end            time.Time
	cpuModel              string
	cores, nproc          int
	memTotal              string
	kernel                string
	goVersion             string
	loadBefore, loadAfter string // /proc/loadavg's first three figures
	warren, reference     string // what each client ran
	contentDigest         string // SHA-256 of the largest file
	contentSize           int64
}

// results are a run's figures.
type results struct {
	cfg     config
	machine machine
	rows    []row
	details []detail

	digestsOK, digestsBad int
}

func (r *results) add(key, figure string, warren, reference value) {
	r.rows = append(r.rows, row{key: key, figure: figure, warren: warren, reference: reference})
}

func (r *results) row(key string) (row, bool) {
	i := slices.IndexFunc(r.rows, func(x row) bool { return x.key == key })
	if i < 0 {
		return row{}, false
	}
	return r.rows[i], true
}

// rowOrder is the order of the table's rows.
var rowOrder = []string{
	"download", "upload", "parallel",
	"ttfb-name-p50", "ttfb-name-p90", "ttfb-ip-p50", "ttfb-ip-p90",
	"cpu-download", "cpu-download-tunnel", "cpu-upload", "cpu-upload-tunnel",
	"rss-idle", "rss-idle-anon", "rss-idle-file", "rss-download", "rss-upload", "rss-parallel", "rss-ttfb", "rss-scale", "rss-refusal",
	"refusal-p50", "refusal-p99",
	"scale-open", "scale-memory",
}

// sortRows puts the rows in rowOrder.
func (r *results) sortRows() {
	slices.SortStableFunc(r.rows, func(a, b row) int {
		return slices.Index(rowOrder, a.key) - slices.Index(rowOrder, b.key)
	})
}

// expectedKeys are the rows a run of cfg must produce.
func expectedKeys(cfg config) []string {
	keys := []string{"rss-idle", "rss-idle-anon", "rss-idle-file"}
	for _, p := range cfg.phases {
		switch p {
		case "download", "upload":
			keys = append(keys, p, "cpu-"+p, "cpu-"+p+"-tunnel")
		case "parallel":
			keys = append(keys, p)
		case "ttfb":
			keys = append(keys, "ttfb-name-p50", "ttfb-name-p90", "ttfb-ip-p50", "ttfb-ip-p90")
		case "scale":
			keys = append(keys, "scale-open", "scale-memory")
		case "refusal":
			keys = append(keys, "refusal-p50", "refusal-p99")
		}
		keys = append(keys, "rss-"+p)
	}
	return keys
}

// missing lists the figures the run should have produced and did not: a
// row that is not there, or a client measured without its value.
func (r *results) missing() []string {
	var m []string
	for _, k := range expectedKeys(r.cfg) {
		row, ok := r.row(k)
		if !ok {
			m = append(m, k)
			continue
		}
		for _, c := range []struct {
			name string
			v    value
		}{{clientWarren, row.warren}, {clientReference, row.reference}} {
			if r.cfg.measures(c.name) && !c.v.set && !c.v.na {
				m = append(m, k+" ("+c.name+")")
			}
		}
	}
	return m
}

// problems says what makes the run's figures wrong: digests that did not
// match, figures missing.
func (r *results) problems() []string {
	var p []string
	if r.digestsBad > 0 {
		p = append(p, fmt.Sprintf("%d of %d digests did not match", r.digestsBad, r.digestsOK+r.digestsBad))
	}
	if r.digestsOK+r.digestsBad == 0 && slices.ContainsFunc(r.cfg.phases, func(p string) bool { return p != "scale" && p != "refusal" }) {
		p = append(p, "no digest was checked")
	}
	if m := r.missing(); len(m) > 0 {
		p = append(p, "figures missing: "+strings.Join(m, ", "))
	}
	return p
}

// header is the lines that say what was measured, where and when.
func (r *results) header() []string {
	m, c := r.machine, r.cfg
	h := []string{
		fmt.Sprintf("date: %s, %.0f s", m.start.UTC().Format("2006-01-02 15:04 MST"), m.end.Sub(m.start).Seconds()),
		fmt.Sprintf("machine: %s, %d cores (nproc %d), %s memory; Linux %s; %s", m.cpuModel, m.cores, m.nproc, m.memTotal, m.kernel, m.goVersion),
		fmt.Sprintf("load average (1, 5, 15 min): %s before, %s after", m.loadBefore, m.loadAfter),
		"warren: " + m.warren,
		"reference: " + m.reference,
		fmt.Sprintf("files: ChaCha8 stream with a fixed seed; the %s file's SHA-256 is %s, each smaller file is its prefix", sizeString(m.contentSize), m.contentDigest),
		fmt.Sprintf("settings: -runs %d -size %s -parallel %d -parallel-size %s -requests %d -small-size %s -conns %d -open-workers %d -refusals %d -phases %s -clients %s",
			c.runs, compact(c.large), c.parallel, compact(c.medium), c.requests, compact(c.small), c.conns, c.openWorkers, c.refusals,
			strings.Join(c.phases, ","), strings.Join(c.clients, ",")),
	}
	return h
}

func compact(n int64) string { return strings.ReplaceAll(sizeString(n), " ", "") }

func (r *results) digestLine() string {
	if r.digestsBad == 0 {
		return fmt.Sprintf("digests: %d checked, all matched", r.digestsOK)
	}
	return fmt.Sprintf("digests: %d checked, %d DID NOT MATCH", r.digestsOK+r.digestsBad, r.digestsBad)
}

func (d detail) line() string {
	return fmt.Sprintf("%s: warren %s; reference %s", d.label, d.numbers(d.warren), d.numbers(d.reference))
}

func (d detail) numbers(xs []float64) string {
	if len(xs) == 0 {
		return "—"
	}
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = number(x)
		if d.counts {
			s[i] = fmt.Sprintf("%.0f", x)
		}
		if d.names != nil && i < len(d.names) {
			s[i] = d.names[i] + " " + s[i]
		}
	}
	if d.names != nil {
		return strings.Join(s, ", ")
	}
	return strings.Join(s, " ")
}

// writeText prints the results as a table.
func (r *results) writeText(w io.Writer) {
	fmt.Fprintln(w, "warren benchmark (issue 8)")
	for _, h := range r.header() {
		fmt.Fprintln(w, h)
	}
	width := len("figure")
	for _, row := range r.rows {
		width = max(width, len([]rune(row.figure)))
	}
	pad := func(s string) string { return s + strings.Repeat(" ", width-len([]rune(s))) }
	fmt.Fprintf(w, "\n%s  %10s  %10s  %10s\n", pad("figure"), "warren", "reference", "warren/ref")
	for _, row := range r.rows {
		fmt.Fprintf(w, "%s  %10s  %10s  %10s\n", pad(row.figure), row.warren, row.reference, row.ratio())
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, r.digestLine())
	for _, d := range r.details {
		fmt.Fprintln(w, d.line())
	}
}

// writeMarkdown writes the results as a markdown section.
func (r *results) writeMarkdown(w io.Writer) {
	for _, h := range r.header() {
		fmt.Fprintf(w, "- %s\n", h)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| figure | warren | reference | warren/reference |")
	fmt.Fprintln(w, "|---|--:|--:|--:|")
	for _, row := range r.rows {
		fmt.Fprintf(w, "| %s | %s | %s | %s |\n", row.figure, row.warren, row.reference, row.ratio())
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "- %s\n", r.digestLine())
	for _, d := range r.details {
		fmt.Fprintf(w, "- %s\n", d.line())
	}
}

// median of xs (which it sorts).
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	slices.Sort(xs)
	n := len(xs)
	if n%2 == 1 {
		return xs[n/2]
	}
	return (xs[n/2-1] + xs[n/2]) / 2
}

// percentile is the nearest-rank p-th percentile of xs (which it sorts):
// the smallest sample that p percent of the samples are at or below.
func percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	slices.Sort(xs)
	rank := int(math.Ceil(p / 100 * float64(len(xs))))
	return xs[min(max(rank, 1), len(xs))-1]
}
