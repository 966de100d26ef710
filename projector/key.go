package projector

import (
	"errors"
	"fmt"
	"strings"

	"github.com/kvsync/kvsync/internal/kvkey"
)

// Layout says how a key becomes a path inside a projection folder.
type Layout int

const (
	// Flat makes the key the file name; '/' in a key makes folders.
	Flat Layout = iota
	// Tree makes '.' make folders too; keys containing '/' are rejected there,
	// because "a/b" and "a.b" would both map to the path "a/b".
	Tree
)

// String returns "flat" or "tree".
func (l Layout) String() string {
	switch l {
	case Flat:
		return "flat"
	case Tree:
		return "tree"
	}
	return fmt.Sprintf("Layout(%d)", int(l))
}

// ErrInvalidKey is wrapped by every error of KeyPath and PathKey; the message
// names the rule the key or path broke.
var ErrInvalidKey = errors.New("invalid key")

// ErrForeign is wrapped by a PathError when the path exists and kvsync did not
// write it: such a file is never overwritten or deleted.
var ErrForeign = errors.New("file not written by kvsync")

// maxSegment is the longest path segment (file or folder name) KeyPath accepts.
const maxSegment = 255

const (
	reservedDots   = ".."      // Kubernetes' atomic writer reserves this prefix; so do we ("..data").
	reservedKvsync = ".kvsync" // our state folder and temp files
)

// KeyPath maps a KV key to a clean slash-separated path relative to a projection
// folder. strip is removed from the key first; a key without it is rejected.
//
// Every error wraps ErrInvalidKey and names the rule broken: the key is not valid
// per kvkey.Valid (raw publishers can send any subject token), is longer than
// 1 KiB, or, after strip, is empty, absolute, has an empty, "." or ".." segment, a
// segment starting with ".." (reserved) or ".kvsync" (kvsync's own files), or a
// segment longer than 255 bytes. In Tree layout a key containing '/' is
// rejected.
func KeyPath(key, strip string, l Layout) (string, error) {
	if err := kvkey.Valid(key); err != nil {
		return "", fmt.Errorf("%w: %w", ErrInvalidKey, err)
	}
	rest, ok := strings.CutPrefix(key, strip)
	if !ok {
		return "", fmt.Errorf("%w %q: does not start with strip prefix %q", ErrInvalidKey, key, strip)
	}
	if rest == "" {
		return "", fmt.Errorf("%w %q: empty after stripping %q", ErrInvalidKey, key, strip)
	}
	var sep string
	switch l {
	case Flat:
		sep = "/"
	case Tree:
		if strings.IndexByte(rest, '/') >= 0 {
			return "", fmt.Errorf("%w %q: '/' is not allowed in tree layout (ambiguous with '.')", ErrInvalidKey, key)
		}
		sep = "."
	default:
		return "", fmt.Errorf("%w %q: unknown layout %d", ErrInvalidKey, key, int(l))
	}
	if rest[0] == '/' {
		return "", fmt.Errorf("%w %q: absolute path after stripping %q", ErrInvalidKey, key, strip)
	}
	for s := rest; ; {
		seg, more, found := strings.Cut(s, sep)
		if why := badSegment(seg); why != "" {
			return "", fmt.Errorf("%w %q: %s", ErrInvalidKey, key, why)
		}
		if !found {
			break
		}
		s = more
	}
	if l == Tree {
		return strings.ReplaceAll(rest, ".", "/"), nil
	}
	return rest, nil
}

// badSegment says which rule a path segment breaks, or "".
func badSegment(seg string) string {
	switch {
	case seg == "":
		return "empty path segment"
	case seg == ".":
		return `"." segment`
	case seg == "..":
		return `".." segment`
	case strings.HasPrefix(seg, reservedDots):
		return fmt.Sprintf("segment %q starts with %q (reserved)", seg, reservedDots)
	case strings.HasPrefix(seg, reservedKvsync):
		return fmt.Sprintf("segment %q starts with %q (reserved for kvsync's own files)", seg, reservedKvsync)
	case len(seg) > maxSegment:
		return fmt.Sprintf("segment of %d bytes, longer than %d", len(seg), maxSegment)
	}
	return ""
}

// PathKey is the inverse of KeyPath, for pushing a local file back: for every key
// k that KeyPath accepts, PathKey(KeyPath(k)) == k. rel is slash-separated and
// relative to the projection folder. It rejects (wrapping ErrInvalidKey) every path
// KeyPath could not have produced, such as a folder name with '.' in Tree layout.
func PathKey(rel, strip string, l Layout) (string, error) {
	var key string
	switch l {
	case Flat:
		key = strip + rel
	case Tree:
		if strings.IndexByte(rel, '.') >= 0 {
			return "", fmt.Errorf("%w: path %q has '.', which tree layout cannot map back to a key", ErrInvalidKey, rel)
		}
		key = strip + strings.ReplaceAll(rel, "/", ".")
	default:
		return "", fmt.Errorf("%w: path %q: unknown layout %d", ErrInvalidKey, rel, int(l))
	}
	p, err := KeyPath(key, strip, l)
	if err != nil {
		return "", fmt.Errorf("path %q: %w", rel, err)
	}
	if p != rel {
		return "", fmt.Errorf("%w: path %q is not the path of key %q (%q)", ErrInvalidKey, rel, key, p)
	}
	return key, nil
}

// checkPath checks that rel is a path KeyPath could produce in some layout: clean,
// relative, slash-separated, with no reserved or oversized segment. Dir uses it on
// every Change, since callers may build paths by hand.
func checkPath(rel string) error {
	if rel == "" {
		return fmt.Errorf("%w: empty path", ErrInvalidKey)
	}
	if len(rel) > kvkey.MaxKeyLen {
		return fmt.Errorf("%w: path of %d bytes, longer than %d", ErrInvalidKey, len(rel), kvkey.MaxKeyLen)
	}
	if rel[0] == '/' {
		return fmt.Errorf("%w: path %q is absolute", ErrInvalidKey, rel)
	}
	for s := rel; ; {
		seg, more, found := strings.Cut(s, "/")
		if why := badSegment(seg); why != "" {
			return fmt.Errorf("%w: path %q: %s", ErrInvalidKey, rel, why)
		}
		for i := 0; i < len(seg); i++ {
			if c := seg[i]; c == 0 || c == '\\' {
				return fmt.Errorf("%w: path %q has byte %q", ErrInvalidKey, rel, c)
			}
		}
		if !found {
			return nil
		}
		s = more
	}
}
