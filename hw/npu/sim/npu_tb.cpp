// Verilator harness: the NPU as a board behind a byte-stream link. It reads the host protocol's
// frames on stdin (the same frames a UART/SPI bridge takes, see ../README.md), turns them into
// cycles on npu_top's memory-mapped host port, and answers on stdout.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include "Vnpu_top.h"
#include "verilated.h"

static Vnpu_top* top;
static uint64_t ticks = 0;
static std::vector<uint64_t> retired;  // tick of each layer_done pulse of the last run

static void tick() {
    top->clk = 0; top->eval();
    top->clk = 1; top->eval();
    ++ticks;
    if (top->layer_done) retired.push_back(ticks);
}

static void bus_write(uint32_t addr, uint8_t data) {
    top->h_addr = addr; top->h_wdata = data; top->h_we = 1;
    tick();
    top->h_we = 0;
}

static uint8_t bus_read(uint32_t addr) {
    top->h_addr = addr; top->h_re = 1;
    tick();
    top->h_re = 0; top->eval();
    return top->h_rdata;
}

static uint32_t reg32(uint32_t offset) {
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v |= uint32_t(bus_read(offset + i)) << (8 * i);
    return v;
}

static bool get(void* buf, size_t n) { return fread(buf, 1, n, stdin) == n; }
static void put(const void* buf, size_t n) { fwrite(buf, 1, n, stdout); }

int main(int argc, char** argv) {
    Verilated::commandArgs(argc, argv);
    top = new Vnpu_top;
    top->rst = 1; top->h_we = 0; top->h_re = 0;
    for (int i = 0; i < 4; ++i) tick();
    top->rst = 0; tick();
    std::vector<uint8_t> buf;
    for (;;) {
        uint8_t cmd;
        if (!get(&cmd, 1)) break;
        uint32_t addr = 0, len = 0;
        if (cmd == 'W' || cmd == 'R') {
            if (!get(&addr, 4) || !get(&len, 4)) break;
        }
        if (cmd == 'W') {
            buf.resize(len);
            if (len && !get(buf.data(), len)) break;
            for (uint32_t i = 0; i < len; ++i) bus_write(addr + i, buf[i]);
            put("K", 1);
        } else if (cmd == 'R') {
            buf.resize(len);
            for (uint32_t i = 0; i < len; ++i) buf[i] = bus_read(addr + i);
            put(buf.data(), len);
        } else if (cmd == 'S') {
            retired.clear();
            bus_write(0, 1);
            for (int i = 0; i < 4 && !top->busy; ++i) tick();
            retired.insert(retired.begin(), ticks);  // the engine takes the start (done clears)
            put("K", 1);
        } else if (cmd == 'P') {  // wait for done (at most `limit` cycles), then report
            uint32_t limit;
            if (!get(&limit, 4)) break;
            uint64_t begin = ticks;
            while (!(top->done && !top->busy) && ticks - begin < limit) tick();
            uint8_t status = bus_read(0);
            uint32_t cycles = reg32(4), layers = reg32(8);
            put(&status, 1); put(&cycles, 4); put(&layers, 4); put(&ticks, 8);
        } else if (cmd == 'T') {  // simulation only: tick of the start and of each retired layer
            uint32_t n = retired.size();
            put(&n, 4);
            put(retired.data(), 8 * n);
        } else if (cmd == 'Q') {
            break;
        } else {
            fprintf(stderr, "npu_tb: unknown command byte 0x%02x\n", cmd);
            return 2;
        }
        fflush(stdout);
    }
    top->final();
    delete top;
    return 0;
}
