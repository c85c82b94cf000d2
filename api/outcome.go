package api

// Codes added after api.go's table (docs/api.md, "Errors"); kept in
// their own file so that branches adding other codes to that table merge.
const (
	// CodeOutcomeUnknown (503): a write reached the leader but leadership
	// was lost before it committed. It may or may not have been applied:
	// read before retrying. Clients never retry it on their own.
	CodeOutcomeUnknown = "outcome_unknown"
)

// Is makes errors.Is(err, target) true when target carries the same API
// code, i.e. has an APICode() string method returning e.Code (the sentinels
// of the client package, such as client.ErrSealed).
func (e *Error) Is(target error) bool {
	t, ok := target.(interface{ APICode() string })
	return ok && e != nil && t.APICode() == e.Code
}
