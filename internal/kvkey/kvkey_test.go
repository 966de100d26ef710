package kvkey

import (
	"errors"
	"strings"
	"testing"
)

func TestValid(t *testing.T) {
	for _, tt := range []struct {
		key string
		ok  bool
	}{
		{"a", true}, {"app.db.host", true}, {"a/b/c", true}, {"x=1_-", true},
		{"", false}, {".a", false}, {"a.", false}, {"a..b", false}, {"a b", false},
		{"a*", false}, {"a>", false}, {"é", false}, {"a\x00", false}, {"a\\b", false},
		{strings.Repeat("k", MaxKeyLen), true}, {strings.Repeat("k", MaxKeyLen+1), false},
	} {
		err := Valid(tt.key)
		if got := err == nil; got != tt.ok {
			t.Errorf("Valid(%q)=%v, want ok=%v", tt.key, err, tt.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalid) {
			t.Errorf("Valid(%q) error %v does not wrap ErrInvalid", tt.key, err)
		}
	}
}

func TestValidFilter(t *testing.T) {
	for _, tt := range []struct {
		f  string
		ok bool
	}{
		{">", true}, {"*", true}, {"a.*.c", true}, {"a.>", true}, {"a/b.>", true},
		{"", false}, {">.a", false}, {"a..b", false}, {"a.>x", false}, {"a b", false},
	} {
		if got := ValidFilter(tt.f) == nil; got != tt.ok {
			t.Errorf("ValidFilter(%q) ok=%v, want %v", tt.f, got, tt.ok)
		}
	}
}

func TestMatch(t *testing.T) {
	for _, tt := range []struct {
		filter, key string
		want        bool
	}{
		{">", "a", true}, {">", "a.b.c", true},
		{"a.>", "a", false}, {"a.>", "a.b", true}, {"a.>", "a.b.c", true}, {"a.>", "ab.c", false},
		{"*", "a", true}, {"*", "a.b", false}, {"a.*", "a.b", true}, {"a.*", "a.b.c", false},
		{"a.*.c", "a.b.c", true}, {"a.*.c", "a.b.d", false},
		{"a", "a", true}, {"a", "a.b", false}, {"a.b", "a", false},
		{"a/b", "a/b", true}, {"a/*", "a/b", false}, {"*", "a/b", true},
		{"flags.>", "flags.beta", true},
	} {
		if got := Match(tt.filter, tt.key); got != tt.want {
			t.Errorf("Match(%q, %q)=%v, want %v", tt.filter, tt.key, got, tt.want)
		}
	}
}

func TestValidBucket(t *testing.T) {
	if err := ValidBucket("app_1-x"); err != nil {
		t.Fatalf("ValidBucket(app_1-x)=%v", err)
	}
	for _, b := range []string{"", "a.b", "a b", "a/b", "a*"} {
		if ValidBucket(b) == nil {
			t.Errorf("ValidBucket(%q)=nil, want error", b)
		}
	}
}

func TestSplit(t *testing.T) {
	if b, k := Split("other:a.b", "def"); b != "other" || k != "a.b" {
		t.Errorf("Split(other:a.b)=%q,%q", b, k)
	}
	if b, k := Split("a.b", "def"); b != "def" || k != "a.b" {
		t.Errorf("Split(a.b)=%q,%q", b, k)
	}
}
