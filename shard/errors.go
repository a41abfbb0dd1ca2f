package shard

import (
	"errors"
	"fmt"
)

// Error classes. Every error this package returns wraps one of them, and the
// feed layer maps each class to a gRPC code in one place.
var (
	// ErrInvalid: the request itself is wrong (bad spec, rank out of range).
	ErrInvalid = errors.New("invalid argument")
	// ErrNotFound: a path or glob matched nothing.
	ErrNotFound = errors.New("not found")
	// ErrPermission: a path resolves outside every data root.
	ErrPermission = errors.New("permission denied")
	// ErrBadInput: a file or record is malformed.
	ErrBadInput = errors.New("bad input")
	// ErrUnsupported: valid input this build cannot read.
	ErrUnsupported = errors.New("unsupported")
	// ErrExhausted: a configured bound would be exceeded (an upload larger
	// than the room for uploads).
	ErrExhausted = errors.New("resource exhausted")
)

// InputError reports malformed or unreadable input: which file, where in it,
// and why. It wraps ErrBadInput (or ErrUnsupported) so callers can classify it.
type InputError struct {
	File  string // URI of the file
	Where string // place in the file: "row group 3", "line 17", "member foo.jpg"
	Class error  // ErrBadInput or ErrUnsupported
	Err   error  // the underlying cause
}

func (e *InputError) Error() string {
	where := ""
	if e.Where != "" {
		where = " at " + e.Where
	}
	return fmt.Sprintf("%s%s: %v", e.File, where, e.Err)
}

func (e *InputError) Unwrap() []error { return []error{e.Class, e.Err} }

// BadInput returns an InputError of class ErrBadInput.
func BadInput(file, where string, err error) *InputError {
	return &InputError{File: file, Where: where, Class: ErrBadInput, Err: err}
}

// Invalidf returns an error of class ErrInvalid.
func Invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}
