// TFLite's MultiplyByQuantizedMultiplier, pipelined (4 cycles, one result per cycle):
//   y = RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(x << max(sh,0), m), max(-sh,0))
// `tag` travels with the value (what to do with the result). `even` (held for a whole layer) makes the
// final division round half to even, as ONNX's float requantization does for layers the QDQ graph
// computes in float (bilinear resize).
module npu_requant #(
    parameter TW = 8
) (
    input  wire               clk,
    input  wire               rst,
    input  wire               in_valid,
    input  wire               even,
    input  wire signed [31:0] x,
    input  wire signed [31:0] m,
    input  wire signed [7:0]  sh,
    input  wire [TW-1:0]      in_tag,
    output reg                out_valid,
    output reg  signed [31:0] y,
    output reg  [TW-1:0]      out_tag,
    output wire               busy
);
    // stage 1: left shift (int32 wrap-around), right shift amount
    reg               v1;
    reg signed [31:0] xs1, m1;
    reg        [4:0]  r1;
    reg        [TW-1:0] t1;
    // stage 2: 64-bit product
    reg               v2, ovf2;
    reg signed [63:0] p2;
    reg        [4:0]  r2;
    reg        [TW-1:0] t2;
    // stage 3: rounding doubling high multiply
    reg               v3;
    reg signed [31:0] h3;
    reg        [4:0]  r3;
    reg        [TW-1:0] t3;

    wire signed [63:0] nudged = p2 + (p2[63] ? 64'sd1 - 64'sd1073741824 : 64'sd1073741824);
    // C division by 2**31 truncates toward zero
    wire signed [63:0] high = nudged[63] ? ((nudged + 64'sd2147483647) >>> 31) : (nudged >>> 31);
    wire        [31:0] mask = (32'd1 << r3) - 32'd1;
    wire        [31:0] rem = h3 & mask;
    wire        [31:0] thr = (mask >> 1) + {31'd0, h3[31]};
    wire signed [31:0] q = h3 >>> r3;
    wire        [31:0] half = (r3 == 5'd0) ? 32'd0 : (32'd1 << (r3 - 5'd1));
    wire               up = even ? ((r3 != 5'd0) && ((rem > half) || ((rem == half) && q[0]))) : (rem > thr);

    assign busy = v1 | v2 | v3 | out_valid;

    always @(posedge clk) begin
        if (rst) begin
            v1 <= 1'b0; v2 <= 1'b0; v3 <= 1'b0; out_valid <= 1'b0;
        end else begin
            v1 <= in_valid;
            v2 <= v1;
            v3 <= v2;
            out_valid <= v3;
        end
        xs1 <= sh[7] ? x : (x << sh[4:0]);
        r1 <= sh[7] ? -sh[4:0] : 5'd0;
        m1 <= m;
        t1 <= in_tag;
        p2 <= xs1 * m1;
        ovf2 <= (xs1 == 32'sh80000000) && (m1 == 32'sh80000000);
        r2 <= r1;
        t2 <= t1;
        h3 <= ovf2 ? 32'sh7fffffff : high[31:0];
        r3 <= r2;
        t3 <= t2;
        y <= q + (up ? 32'sd1 : 32'sd0);
        out_tag <= t3;
    end
endmodule
