// Verilator harness: the board top (npu_board) behind its UART pins. Bytes from stdin are sent to
// uart_rx as 8N1 frames of DIV clock cycles per bit; frames the design sends on uart_tx are decoded
// and written to stdout. The host frames of hw/npu/README.md thus travel through the real bridge.
#include <poll.h>
#include <unistd.h>
#include <cstdint>
#include <cstdio>
#include "Vnpu_board.h"
#include "verilated.h"

#ifndef DIV
#define DIV 4
#endif

static Vnpu_board* top;

static void tick() {
    top->clk = 0; top->eval();
    top->clk = 1; top->eval();
}

int main(int argc, char** argv) {
    Verilated::commandArgs(argc, argv);
    top = new Vnpu_board;
    top->uart_rx = 1;
    top->clk_ready = 1;
    for (int i = 0; i < 200; ++i) tick();  // power-on reset
    int send_bit = -1, send_count = 0;      // host -> board: bit index of the frame being sent
    uint16_t frame = 0;
    int recv_bit = -1, recv_count = 0;      // board -> host: sampling state
    uint8_t recv = 0;
    uint64_t quiet = 0;                     // cycles since the board last sent anything
    bool eof = false;
    for (;;) {
        if (send_bit < 0 && !eof) {
            // block for the next host byte only while the board is quiet and idle
            bool idle = recv_bit < 0 && quiet > 20 * DIV && !top->led_busy;
            struct pollfd p = {0, POLLIN, 0};
            if (idle) fflush(stdout);
            if (poll(&p, 1, idle ? -1 : 0) > 0) {
                uint8_t byte;
                if (read(0, &byte, 1) == 1) {
                    frame = uint16_t(byte) << 1 | 0x200;  // start bit 0, data LSB first, stop bit 1
                    send_bit = 0;
                    send_count = 0;
                } else {
                    eof = true;
                }
            }
        }
        if (eof && send_bit < 0 && recv_bit < 0 && quiet > 20 * DIV && !top->led_busy) break;
        if (send_bit >= 0) {
            top->uart_rx = (frame >> send_bit) & 1;
            if (++send_count == DIV) {
                send_count = 0;
                if (++send_bit == 10) {
                    send_bit = -1;
                    quiet = 0;                  // give the board time to answer
                }
            }
        } else {
            top->uart_rx = 1;
        }
        tick();
        ++quiet;
        if (recv_bit < 0) {
            if (!top->uart_tx) {               // start bit: sample the data bits mid-bit
                recv_bit = 0;
                recv_count = DIV + DIV / 2;
                recv = 0;
            }
        } else if (--recv_count == 0) {
            if (recv_bit < 8) {
                recv |= uint8_t(top->uart_tx) << recv_bit;
                ++recv_bit;
                recv_count = DIV;
            } else {                            // stop bit
                if (!top->uart_tx) { fprintf(stderr, "board_tb: framing error\n"); return 2; }
                fwrite(&recv, 1, 1, stdout);
                recv_bit = -1;
                quiet = 0;
            }
        }
        if (recv_bit >= 0) quiet = 0;
    }
    fflush(stdout);
    top->final();
    delete top;
    return 0;
}
