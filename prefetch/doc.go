// Package prefetch is the pipeline between the epoch plan and a session: it
// walks a rank's plan window by window, reads the blocks each window needs
// ahead of time on a worker pool shared by all sessions, puts the window's rows
// in plan order, and cuts them into batches that wait in a bounded queue.
//
// Three daemon-wide pieces tie the sessions together:
//
//   - Scheduler opens every stream and looks ahead across epochs: when a rank's
//     stream nears its epoch's end, the rank's next epoch starts, to be handed
//     to the session that asks for exactly it.
//   - Pool shares the workers that read and decode blocks, serving sessions in
//     turn (each on its own Lane).
//   - Memory is the budget: the allocator of every block and batch, which
//     reuses freed buffers and counts them, and the gate new reads wait at.
//
// It parses no format and decodes no image itself: blocks come from a Source.
package prefetch
