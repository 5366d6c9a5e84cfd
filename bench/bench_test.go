package main

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// TestMain makes the test binary the benchmark's helpers too: the smoke
// test re-executes it as the server and the agents.
func TestMain(m *testing.M) {
	if role := os.Getenv(roleEnv); role != "" {
		os.Exit(runRole(role, os.Args[1:]))
	}
	os.Exit(m.Run())
}

// smokeConfig is a very short run of every phase: it checks that the
// benchmark works, not how fast anything is.
func smokeConfig() config {
	cfg := defaultConfig()
	cfg.runs = 1
	cfg.large = 1 << 20
	cfg.medium = 64 << 10
	cfg.small = 1 << 10
	cfg.parallel = 4
	cfg.requests = 5
	cfg.conns = 20
	cfg.openWorkers = 4
	cfg.refusals = 10
	cfg.plainBuild = true
	return cfg
}

// The benchmark runs every phase with both clients, produces every figure
// and every digest matches. No figure is judged: these machines are noisy.
func TestSmoke(t *testing.T) {
	defer goleak.VerifyNone(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cfg := smokeConfig()
	res, err := run(ctx, cfg, t.Logf)
	if un := (*unavailableError)(nil); errors.As(err, &un) {
		if os.Getenv("CI") != "" {
			t.Fatalf("bench smoke test cannot run in CI: %s", un.why)
		}
		t.Skipf("bench smoke test skipped: %s (it needs root, network namespaces, /dev/net/tun, ip, wg, nft and go)", un.why)
	}
	if err != nil {
		t.Fatal(err)
	}
	var text, md strings.Builder
	res.writeText(&text)
	res.writeMarkdown(&md)
	t.Logf("\n%s", text.String())

	if m := res.missing(); len(m) > 0 {
		t.Errorf("figures missing: %s", strings.Join(m, ", "))
	}
	// Each phase's rows, and nothing more.
	if got, want := len(res.rows), len(expectedKeys(cfg)); got != want {
		t.Errorf("%d rows, want %d", got, want)
	}
	// Every file and upload was checked: the first request before each
	// phase (the processes are new), then the phase's own, with a
	// repetition before it measures for download, upload and parallel (the
	// scale and refusal phases move no file).
	wantDigests := len(cfg.clients) * (len(cfg.phases) + (cfg.runs+1)*(1+1+cfg.parallel) + cfg.runs*2*cfg.requests)
	if res.digestsBad != 0 || res.digestsOK != wantDigests {
		t.Errorf("digests: %d matched, %d did not; want %d matched", res.digestsOK, res.digestsBad, wantDigests)
	}
	if p := res.problems(); len(p) > 0 {
		t.Errorf("problems: %s", strings.Join(p, "; "))
	}
	for _, r := range res.rows {
		if !strings.Contains(text.String(), r.figure) || !strings.Contains(md.String(), "| "+r.figure+" |") {
			t.Errorf("row %q is not in the text and the markdown", r.figure)
		}
	}
}

// The results say what is missing, and the ratio is warren's over the
// reference's.
func TestResults(t *testing.T) {
	cfg := defaultConfig()
	cfg.phases = []string{"refusal"}
	res := &results{cfg: cfg}
	res.add("rss-idle", "idle", measured(10), measured(5))
	res.add("rss-idle-anon", "anonymous", measured(4), measured(3))
	res.add("rss-idle-file", "file", measured(6), measured(2))
	res.add("refusal-p50", "p50", measured(1), notApplicable)
	if got, want := strings.Join(res.missing(), ","), "refusal-p99,rss-refusal"; got != want {
		t.Errorf("missing %q, want %q", got, want)
	}
	res.add("refusal-p99", "p99", value{}, notApplicable)
	res.add("rss-refusal", "peak", measured(3), notApplicable)
	if got, want := strings.Join(res.missing(), ","), "refusal-p99 (warren)"; got != want {
		t.Errorf("missing %q, want %q", got, want)
	}
	if r, _ := res.row("rss-idle"); r.ratio() != "2.00" {
		t.Errorf("ratio %q", r.ratio())
	}
	if r, _ := res.row("refusal-p50"); r.ratio() != "" || r.reference.String() != "n/a" {
		t.Errorf("ratio %q, reference %q", r.ratio(), r.reference)
	}
}

func TestStats(t *testing.T) {
	for _, tc := range []struct {
		name string
		xs   []float64
		p    float64
		want float64
	}{
		{"p50 of 4", []float64{4, 1, 3, 2}, 50, 2},
		{"p90 of 10", []float64{10, 9, 8, 7, 6, 5, 4, 3, 2, 1}, 90, 9},
		{"p99 of 200", func() []float64 {
			xs := make([]float64, 200)
			for i := range xs {
				xs[i] = float64(200 - i)
			}
			return xs
		}(), 99, 198},
		{"p100", []float64{3, 1}, 100, 3},
		{"one sample", []float64{7}, 1, 7},
	} {
		if got := percentile(tc.xs, tc.p); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
	if m := median([]float64{5, 1, 3}); m != 3 {
		t.Errorf("median %v", m)
	}
	if m := median([]float64{4, 1, 3, 2}); m != 2.5 {
		t.Errorf("median %v", m)
	}
}

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"100MiB", 100 << 20, true},
		{"1KiB", 1024, true},
		{"2 GiB", 2 << 30, true},
		{"1000", 1000, true},
		{"64B", 64, true},
		{"1MB", 0, false},
		{"-1KiB", 0, false},
		{"KiB", 0, false},
	} {
		got, err := parseSize(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("parseSize(%q) = %d, %v; want %d, ok %v", tc.in, got, err, tc.want, tc.ok)
		}
	}
	if s := sizeString(100 << 20); s != "100 MiB" {
		t.Errorf("sizeString: %q", s)
	}
}
