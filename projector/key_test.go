package projector

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
)

func TestKeyPath(t *testing.T) {
	long := strings.Repeat("s", maxSegment)
	for _, tt := range []struct {
		key, strip string
		layout     Layout
		want       string // "" means rejected
		rule       string // part of the error message naming the rule
	}{
		{"a", "", Flat, "a", ""},
		{"app.db.host", "", Flat, "app.db.host", ""},
		{"a/b/c.conf", "", Flat, "a/b/c.conf", ""},
		{"conf/nginx.conf", "conf/", Flat, "nginx.conf", ""},
		{"app.db.host", "", Tree, "app/db/host", ""},
		{"app.db.host", "app.", Tree, "db/host", ""},
		{"flags.x", "flags", Flat, ".x", ""},
		{"x=1_-", "", Tree, "x=1_-", ""},
		{long, "", Flat, long, ""},
		{"a/" + long, "", Flat, "a/" + long, ""},

		{"", "", Flat, "", "empty"},
		{"a b", "", Flat, "", "byte"},
		{"a\x00b", "", Flat, "", "byte"},
		{"a\\b", "", Flat, "", "byte"},
		{"a\nb", "", Flat, "", "byte"},
		{"é", "", Flat, "", "byte"},
		{"a*", "", Flat, "", "byte"},
		{strings.Repeat("k", 1025), "", Flat, "", "longer than 1024"},
		{"/etc/passwd", "", Flat, "", "absolute"},
		{"app//etc", "app/", Flat, "", "absolute"},
		{"a//b", "", Flat, "", "empty path segment"},
		{"a/", "", Flat, "", "empty path segment"},
		{"a/./b", "", Flat, "", `"." segment`},
		{"./a", "", Flat, "", "starts or ends with '.'"},
		{"../x", "", Flat, "", "starts or ends with '.'"},
		{"a/../../b", "", Flat, "", `empty token`},
		{"..data", "", Flat, "", "starts or ends with '.'"},
		{"a/.kvsync", "", Flat, "", "reserved for kvsync"},
		{"a/.kvsync-tmp-1", "", Flat, "", "reserved for kvsync"},
		{"x/.kvsync/manifest", "x/", Flat, "", "reserved for kvsync"},
		{strings.Repeat("s", maxSegment+1), "", Flat, "", "longer than 255"},
		{"a/" + strings.Repeat("s", maxSegment+1), "", Flat, "", "longer than 255"},
		{"app.x", "other.", Flat, "", "strip prefix"},
		{"app.", "", Flat, "", "starts or ends with '.'"},
		{"app", "app", Flat, "", "empty after stripping"},
		{"a/b", "", Tree, "", "not allowed in tree"},
		{"flags.x", "flags", Tree, "", "empty path segment"},
		{"a." + strings.Repeat("s", maxSegment+1), "", Tree, "", "longer than 255"},
		{"a", "", Layout(7), "", "unknown layout"},
	} {
		t.Run(tt.layout.String()+"/"+tt.key[:min(len(tt.key), 20)], func(t *testing.T) {
			got, err := KeyPath(tt.key, tt.strip, tt.layout)
			if tt.want == "" {
				if err == nil {
					t.Fatalf("KeyPath(%q, %q)=%q, want error %q", tt.key, tt.strip, got, tt.rule)
				}
				if !errors.Is(err, ErrInvalidKey) {
					t.Fatalf("KeyPath(%q) error %v does not wrap ErrInvalidKey", tt.key, err)
				}
				if !strings.Contains(err.Error(), tt.rule) {
					t.Fatalf("KeyPath(%q) error %q does not name the rule %q", tt.key, err, tt.rule)
				}
				return
			}
			if err != nil {
				t.Fatalf("KeyPath(%q, %q): %v", tt.key, tt.strip, err)
			}
			if got != tt.want {
				t.Fatalf("KeyPath(%q, %q)=%q, want %q", tt.key, tt.strip, got, tt.want)
			}
			back, err := PathKey(got, tt.strip, tt.layout)
			if err != nil {
				t.Fatalf("PathKey(%q, %q): %v", got, tt.strip, err)
			}
			if back != tt.key {
				t.Fatalf("PathKey(%q, %q)=%q, want %q", got, tt.strip, back, tt.key)
			}
		})
	}
}

func TestPathKey(t *testing.T) {
	for _, tt := range []struct {
		rel, strip string
		layout     Layout
		want       string // "" means rejected
	}{
		{"a", "", Flat, "a"},
		{"a/b.conf", "", Flat, "a/b.conf"},
		{"db/host", "app.", Tree, "app.db.host"},
		{"nginx.conf", "conf/", Flat, "conf/nginx.conf"},
		{"a.b/c", "", Tree, ""}, // "a.b.c" maps to "a/b/c": ambiguous
		{"a.b", "", Tree, ""},
		{"", "", Flat, ""},
		{"", "app.", Flat, ""},
		{"/etc/passwd", "", Flat, ""},
		{"a//b", "", Flat, ""},
		{"../x", "", Flat, ""},
		{"a/../b", "", Flat, ""},
		{"./a", "", Flat, ""},
		{"a/./b", "", Flat, ""},
		{"..data/x", "", Flat, ""},
		{".kvsync/manifest", "", Flat, ""},
		{".kvsync-tmp-123", "", Flat, ""},
		{"a b", "", Flat, ""},
		{"a\\b", "", Flat, ""},
		{"a/b", "", Tree, "a.b"},
		{"a/", "", Tree, ""},
		{"x~", "", Flat, ""},
		{".swp", "", Flat, ""},
	} {
		got, err := PathKey(tt.rel, tt.strip, tt.layout)
		if tt.want == "" {
			if err == nil {
				t.Errorf("PathKey(%q, %q, %v)=%q, want error", tt.rel, tt.strip, tt.layout, got)
			} else if !errors.Is(err, ErrInvalidKey) {
				t.Errorf("PathKey(%q) error %v does not wrap ErrInvalidKey", tt.rel, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("PathKey(%q, %q, %v): %v", tt.rel, tt.strip, tt.layout, err)
			continue
		}
		if got != tt.want {
			t.Errorf("PathKey(%q, %q, %v)=%q, want %q", tt.rel, tt.strip, tt.layout, got, tt.want)
		}
	}
}

// TestKeyPathRoundTrip checks PathKey(KeyPath(k)) == k over a grid of keys built
// from every allowed byte in every position, in both layouts and with strips.
func TestKeyPathRoundTrip(t *testing.T) {
	parts := []string{"a", "Z", "0", "-", "_", "=", ".", "/", "x.y", "a/b", ".h", "kvsync"}
	strips := []string{"", "a", "a.", "a/"}
	n := 0
	for _, p1 := range parts {
		for _, p2 := range parts {
			for _, p3 := range parts {
				key := p1 + p2 + p3
				for _, strip := range strips {
					for _, l := range []Layout{Flat, Tree} {
						p, err := KeyPath(key, strip, l)
						if err != nil {
							continue
						}
						n++
						back, err := PathKey(p, strip, l)
						if err != nil {
							t.Fatalf("PathKey(KeyPath(%q)=%q, %q, %v): %v", key, p, strip, l, err)
						}
						if back != key {
							t.Fatalf("PathKey(KeyPath(%q)=%q, %q, %v)=%q", key, p, strip, l, back)
						}
					}
				}
			}
		}
	}
	if n < 1000 {
		t.Fatalf("only %d keys accepted; the grid is too small to mean anything", n)
	}
}

func FuzzKeyPath(f *testing.F) {
	for _, s := range []string{"a", "app.db.host", "a/b/c", "../x", "/etc/passwd", "a/../../b", "..data",
		"a\x00b", "é/ü", "a/.kvsync", ".kvsync-tmp-1", "a//b", "a/./b", strings.Repeat("x", 300)} {
		f.Add(s, "", false)
		f.Add(s, "a", true)
	}
	dir := "/projection/dir"
	f.Fuzz(func(t *testing.T, key, strip string, tree bool) {
		l := Flat
		if tree {
			l = Tree
		}
		p, err := KeyPath(key, strip, l)
		if err != nil {
			if !errors.Is(err, ErrInvalidKey) {
				t.Fatalf("KeyPath(%q, %q, %v) error %v does not wrap ErrInvalidKey", key, strip, l, err)
			}
			return
		}
		if p == "" || filepath.IsAbs(p) || filepath.Clean(p) != p || !filepath.IsLocal(p) {
			t.Fatalf("KeyPath(%q, %q, %v)=%q is not clean, relative and local", key, strip, l, p)
		}
		if j := filepath.Join(dir, p); !strings.HasPrefix(j, dir+"/") {
			t.Fatalf("KeyPath(%q, %q, %v)=%q leaves the folder: %q", key, strip, l, p, j)
		}
		for _, seg := range strings.Split(p, "/") {
			if strings.HasPrefix(seg, "..") || strings.HasPrefix(seg, ".kvsync") || len(seg) > maxSegment {
				t.Fatalf("KeyPath(%q, %q, %v)=%q has reserved or oversized segment %q", key, strip, l, p, seg)
			}
		}
		back, err := PathKey(p, strip, l)
		if err != nil {
			t.Fatalf("PathKey(%q, %q, %v): %v (from key %q)", p, strip, l, err, key)
		}
		if back != key {
			t.Fatalf("PathKey(KeyPath(%q)=%q)=%q", key, p, back)
		}
	})
}

func BenchmarkKeyPath(b *testing.B) {
	for _, bb := range []struct {
		name   string
		layout Layout
	}{{"flat", Flat}, {"tree", Tree}} {
		b.Run(bb.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := KeyPath("app.service.db.primary.host", "app.", bb.layout); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
