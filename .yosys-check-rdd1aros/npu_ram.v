// Simple dual-port RAM: one write port with byte enables, one registered read port.
// Infers block RAM in Yosys (iCE40/ECP5), Vivado and Quartus; INIT names a $readmemh image
// (one word per line, most significant byte first), which the bitstream flow can patch.
// The NPU never reads a word in the cycle it writes it (a layer's input and output buffers are
// disjoint; the host port does one access per cycle), so the read-during-write result is left
// undefined (`no_rw_check`): Yosys then maps the RAM without collision bypass logic.
module npu_ram #(
    parameter NB = 1,            // bytes per word
    parameter DEPTH = 256,       // words
    parameter AW = 8,            // address bits (>= log2(DEPTH))
    parameter INIT = ""
) (
    input  wire              clk,
    input  wire [NB-1:0]     we,
    input  wire [AW-1:0]     waddr,
    input  wire [8*NB-1:0]   wdata,
    input  wire [AW-1:0]     raddr,
    output reg  [8*NB-1:0]   rdata
);
    (* no_rw_check *) reg [8*NB-1:0] mem [0:DEPTH-1];
    integer i;
    always @(posedge clk) begin
        for (i = 0; i < NB; i = i + 1)
            if (we[i]) mem[waddr][8*i +: 8] <= wdata[8*i +: 8];
        rdata <= mem[raddr];
    end
    initial begin
        if (INIT != "") $readmemh(INIT, mem);
    end
endmodule
