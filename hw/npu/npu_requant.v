// TFLite's MultiplyByQuantizedMultiplier with single rounding (TFLITE_SINGLE_ROUNDING), pipelined
// (4 cycles, one result per cycle):
//   y = (x * m + 2**(n-1)) >> n,  n = 31 - sh  (0..62; the 64-bit product is exact, rounded once)
// Ties go toward +inf; `even` (held for a whole layer) makes them go to even instead (ONNX's rounding,
// for layers the QDQ graph computes in float: bilinear resize). y keeps the low 32 bits.
// `tag` travels with the value (what to do with the result).
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
    // stage 1: operands, right shift n = 31 - sh
    reg               v1;
    reg signed [31:0] x1, m1;
    reg        [5:0]  n1;
    reg        [TW-1:0] t1;
    // stage 2: 64-bit product
    reg               v2;
    reg signed [63:0] p2;
    reg        [5:0]  n2;
    reg        [TW-1:0] t2;
    // stage 3: quotient and rounding decision
    reg               v3, up3;
    reg signed [31:0] q3;
    reg        [TW-1:0] t3;

    wire signed [63:0] q = p2 >>> n2;
    wire        [63:0] mask = (64'd1 << n2) - 64'd1;
    wire        [63:0] rem = p2 & mask;
    wire        [63:0] half = (n2 == 6'd0) ? 64'd0 : (64'd1 << (n2 - 6'd1));
    wire               up = (n2 != 6'd0) && (even ? ((rem > half) || ((rem == half) && q[0])) : (rem >= half));

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
        x1 <= x;
        m1 <= m;
        n1 <= 6'd31 - sh[5:0];
        t1 <= in_tag;
        p2 <= x1 * m1;
        n2 <= n1;
        t2 <= t1;
        q3 <= q[31:0];
        up3 <= up;
        t3 <= t2;
        y <= q3 + (up3 ? 32'sd1 : 32'sd0);
        out_tag <= t3;
    end
endmodule
