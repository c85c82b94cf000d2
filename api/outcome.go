package api

// Codes added after api.go's table (spec/API.md, "Conventions"); kept in
// their own file so that branches adding other codes to that table merge.
const (
	// CodeOutcomeUnknown (503): a write reached the leader but leadership
	// was lost before it committed. It may or may not have been applied:
	// read before retrying. Clients never retry it on their own.
	CodeOutcomeUnknown = "outcome_unknown"
	// CodeTooManyRequests (429): a connection or request cap is reached;
	// the Retry-After header says when to retry.
	CodeTooManyRequests = "too_many_requests"
)

// Is makes errors.Is(err, target) true when target carries the same API
// code, i.e. has an APICode() string method returning e.Code (the sentinels
// of the client package, such as client.ErrSealed).
func (e *Error) Is(target error) bool {
	t, ok := target.(interface{ APICode() string })
	return ok && e != nil && t.APICode() == e.Code
}
