// Package templates owns kvsync's template engine: parsing a Go text/template
// once, rendering it against a read view of the KV buckets (Source), the function
// library templates call, the record of every key and filter a render read (Deps),
// and the output size limit.
//
// It must not do I/O of its own: it imports no NATS code, reads no config files
// and writes no files. The agent implements Source over its in-memory state and
// decides where the rendered bytes go; History is the one call through which a
// render may wait on the network, and it receives the render's context. The
// `file` function reads only through the fs.FS the agent gives it
// (Options.Files), and privateIP/interfaceIP read the host's interface list.
//
// # Function library
//
// Every template gets the sprig text function set (sprig.TxtFuncMap), complete,
// because operators know it from other tools. That includes `env` and `expandenv`,
// which read the kvsync process's environment, and `getHostByName`, which does a
// DNS lookup: a template author can put any of these into a rendered file.
//
// On top of sprig, with the default bucket given in Options and "bucket:key"
// addressing another bucket in every function that takes a key:
//
//	key "k"              value as a string; a missing key fails the render (ErrMissingKey)
//	keyOr "k" "default"  value, or the default when the key is absent
//	keys "app.>"         []Record of the keys matching a NATS wildcard filter, sorted by key
//	tree "app"           nested map of the keys under "app." (see below)
//	exists "k"           bool
//	revision "k"         uint64, 0 when absent
//	history "k"          []Record, oldest first, including delete markers (Op)
//	fromJSON, toJSON, fromYAML, toYAML
//
// sprig's own `keys` (the keys of one or more dicts) still works: `keys` called
// with a single string is the KV function, called with dicts it is sprig's.
//
// `tree "app"` reads the keys matching "app.>" and splits what follows "app." on
// '.' and '/', dropping empty segments, so app.db.host=x and app.db/port=5 become
// {"db": {"host": "x", "port": "5"}}. A key that is both a leaf and a parent
// (app.db and app.db.host) keeps its value under "_value":
// {"db": {"_value": ..., "host": ...}}. When two keys land on the same leaf
// (app.a.b and app.a/b) the lexically first key wins. `tree ""` (or "bucket:")
// is the whole bucket. The key "app" itself is not part of `tree "app"`.
//
// consul-template's names are accepted too (compat.go): keyOrDefault (keyOr,
// but an empty value also gives the default), keyExists (exists), ls and
// safeLs (the keys one segment below a prefix, Key relative to it; safeLs
// waits like a missing key while there is none), parseJSON and parseYAML
// (fromJSON and fromYAML, "" giving an empty map), toTOML, toJSONPretty,
// toUnescapedJSON, toUnescapedJSONPretty, parseBool, parseInt, parseUint,
// parseFloat, base64Encode, base64Decode, base64URLEncode, base64URLDecode,
// trimSpace, toLower, toUpper, toTitle, replaceAll, sha256Hex, md5sum.
// consul-template's tree is not: kvsync's tree returns a nested map; its list
// of pairs is `keys "prefix.>"`. Names sprig already has with other arguments
// (split, contains, regexReplaceAll, trim, ...) keep sprig's meaning.
//
// Three functions read the host, at each render, without recording a
// dependency: `file "path"` reads a file below Options.Files (nil: a template
// that calls it fails to parse), `privateIP` is the first RFC 1918 IPv4
// address of an interface that is up and not a loopback, `interfaceIP "eth0"`
// the first IPv4 address of that interface; `sockaddr` answers consul-template's
// "GetPrivateIP" and "GetInterfaceIP \"eth0\"" with them (host.go).
//
// Options.Denylist takes functions away: a template that names one fails to
// parse, and the clones it is executed with do not have them. Parse reports
// every unknown or denylisted function with its line, not just the first.
// Options.LeftDelim and RightDelim change the delimiters; text between other
// delimiters is printed as it is.
//
// toJSON does not escape HTML characters; toJSON and toYAML sort map keys and
// emit no trailing newline; toYAML indents by two spaces. fromJSON keeps numbers
// as json.Number so large integers round-trip exactly; fromYAML turns maps with
// non-string keys into map[string]any so the result can go through toJSON.
//
// # Missing keys
//
// A `key` call on an absent key records the ref in Result.Missing and yields ""
// so the render can go on and collect every missing key at once (the agent shows
// them as what the template waits on); the render then fails with an error
// wrapping ErrMissingKey and Result.Output is nil. Map lookups on missing fields
// fail too (missingkey=error).
//
// # Cost
//
// Templates are parsed once, against a function library built once per
// process. Each render borrows a clone of the parsed template
// whose functions are bound to that render's Source, context and dependency
// record; clones are pooled, so a render does not re-parse or copy the function
// map. A render's cost depends on what it reads: `key` is one Source.Get, `keys`
// and `tree` one Source.List. Values reach the template as strings that share
// the Source's bytes (see Source), and the record lists `keys` and `tree` build
// are pooled per template, so ranging over many keys costs no copy of a value
// and no list allocation per render; what is left is text/template's own work
// per action. A range over `keys "literal"` whose body only prints record
// fields (`.Key`, `.Value`, `.Revision`, `.Created`, `.Op`, or the same through
// the range's element variable) is executed directly rather than by
// reflection, ~10× faster, with the same output and errors (fastrange.go).
package templates
