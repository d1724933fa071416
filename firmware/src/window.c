#include "window.h"

void win_reset(win_t *w, uint32_t next)
{
    w->next = next;
    w->count = 0;
}

win_place_t win_place(const win_t *w, uint32_t offset, uint32_t n, uint32_t span)
{
    uint32_t end = offset + n;
    if (offset < w->next) {
        return end <= w->next ? WIN_HELD : WIN_REFUSE;
    }
    if (end - w->next > span) {
        return WIN_REFUSE;
    }
    for (uint8_t i = 0; i < w->count; i++) {
        const win_range_t *h = &w->held[i];
        if (offset >= h->start && end <= h->end) {
            return WIN_HELD;
        }
        if (offset < h->end && end > h->start) {
            return WIN_REFUSE;
        }
    }
    if (offset == w->next) {
        return WIN_NEXT;
    }
    return w->count < WINDOW_HELD && n != 0u ? WIN_AHEAD : WIN_REFUSE;
}

void win_took(win_t *w, uint32_t n)
{
    w->next += n;
    uint8_t i = 0;
    while (i < w->count) {
        if (w->held[i].start <= w->next) {
            if (w->held[i].end > w->next) {
                w->next = w->held[i].end;
            }
            w->held[i] = w->held[--w->count];
            i = 0;  /* the new next may reach a range already passed over */
        } else {
            i++;
        }
    }
}

void win_hold(win_t *w, uint32_t offset, uint32_t n)
{
    if (w->count < WINDOW_HELD) {
        w->held[w->count].start = offset;
        w->held[w->count].end = offset + n;
        w->count++;
    }
}
