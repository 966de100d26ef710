// Package projector turns KV state into bytes on disk. It owns:
//
//   - the mapping of KV keys to relative file paths and back (KeyPath, PathKey),
//     which treats every key as untrusted input;
//   - projection folders (Dir): atomic per-file writes, batched durability, the
//     manifest of files kvsync wrote (so foreign files are never touched), pruning
//     of folders it created, and the snapshot mode in which a "..data" symlink swap
//     gives readers one consistent revision of the whole set;
//   - local edits of the files it projects (edits.go): a file it replaces or
//     removes is swapped out whole (renameat2 RENAME_EXCHANGE) and a local
//     edit found in it is held and reported, never deleted; reads without
//     following symlinks, adoption of a local file, conflict copies in
//     <dir>/.kvsync/conflicts: push-back does all of its disk work here;
//   - the notes of rolled-back paths in a folder's state folder (WriteNotes,
//     ReadNotes), the one file of a projection folder written by path rather
//     than through its Dir;
//   - single-file atomic writes for templates and dotenv files (WriteFile), with an
//     in-place fallback for single-file bind mounts;
//   - environment variable names and dotenv encoding (EnvVars, EncodeDotenv).
//
// It must not import NATS code, parse configuration, or run actions: callers hand it
// bytes and it reports what changed on disk. It never writes outside the folder or
// file it was given, never follows a symlinked parent folder, and never overwrites or
// deletes a file that is not in its manifest.
package projector
