// Package prefetch is the pipeline between the epoch plan and a session: it
// walks a rank's plan window by window, reads the blocks each window needs
// ahead of time on a worker pool shared by all sessions, puts the window's rows
// in plan order, and cuts them into batches that wait in a bounded queue.
//
// It parses no format and decodes no image itself: blocks come from a Source.
package prefetch
