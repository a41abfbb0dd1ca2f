package feed

import (
	"context"
	"errors"

	"github.com/loaderd/loaderd/shard"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ErrorDomain is the ErrorInfo domain of loaderd's errors.
const ErrorDomain = "loaderd.dev"

// toStatus maps an error to a gRPC status: the only place that does. Bad
// input carries an ErrorInfo naming the file and the place in it, so clients
// can report them without parsing the message.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	code, reason := codes.Internal, "INTERNAL"
	switch {
	case errors.Is(err, context.Canceled):
		code, reason = codes.Canceled, "CANCELED"
	case errors.Is(err, context.DeadlineExceeded):
		code, reason = codes.DeadlineExceeded, "DEADLINE_EXCEEDED"
	case errors.Is(err, shard.ErrInvalid):
		code, reason = codes.InvalidArgument, "INVALID_ARGUMENT"
	case errors.Is(err, shard.ErrNotFound):
		code, reason = codes.NotFound, "NOT_FOUND"
	case errors.Is(err, shard.ErrPermission):
		code, reason = codes.PermissionDenied, "PERMISSION_DENIED"
	case errors.Is(err, shard.ErrUnsupported):
		code, reason = codes.Unimplemented, "UNSUPPORTED"
	case errors.Is(err, shard.ErrBadInput):
		code, reason = codes.DataLoss, "BAD_INPUT"
	case errors.Is(err, shard.ErrExhausted):
		code, reason = codes.ResourceExhausted, "RESOURCE_EXHAUSTED"
	}
	st := status.New(code, err.Error())
	info := &errdetails.ErrorInfo{Reason: reason, Domain: ErrorDomain}
	var ie *shard.InputError
	if errors.As(err, &ie) {
		info.Metadata = map[string]string{"file": ie.File, "where": ie.Where, "cause": ie.Err.Error()}
	}
	if withDetails, derr := st.WithDetails(info); derr == nil {
		st = withDetails
	}
	return st.Err()
}
