// Single-port RAM: one address for a write (byte enables) or a registered read, never both in one
// cycle. Written so that Yosys infers an iCE40 UP5K SB_SPRAM256KA (`synth_ice40 -spram`: 16K x 16,
// nibble write masks, output held during a write: `no_change`); other tools infer a block RAM.
// No initial contents: the UP5K's SPRAM cannot be initialised by the bitstream, the host loads it.
module npu_spram #(
    parameter NB = 2,            // bytes per word
    parameter DEPTH = 16384,     // words
    parameter AW = 14            // address bits (>= log2(DEPTH))
) (
    input  wire              clk,
    input  wire [NB-1:0]     we,
    input  wire [AW-1:0]     addr,
    input  wire [8*NB-1:0]   wdata,
    output reg  [8*NB-1:0]   rdata
);
    reg [8*NB-1:0] mem [0:DEPTH-1];
    integer i;
    always @(posedge clk) begin
        if (|we) begin
            for (i = 0; i < NB; i = i + 1)
                if (we[i]) mem[addr][8*i +: 8] <= wdata[8*i +: 8];
        end else begin
            rdata <= mem[addr];
        end
    end
endmodule
